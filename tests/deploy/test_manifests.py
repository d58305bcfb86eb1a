"""deploy/ is validated in CI: every YAML parses, kustomize resources exist and make
sense, compose wires the services the issue asks for, the Grafana dashboard is valid."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in _docs(K8S_BASE / resource):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def _containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_deploy_holds_the_expected_yaml_files():
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    assert {
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "k8s/base/kustomization.yaml",
        "k8s/overlays/example/kustomization.yaml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/pleura.yml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    assert _docs(path), f"{path} is empty"


@pytest.mark.parametrize("kustomization", sorted(DEPLOY.glob("k8s/**/kustomization.yaml")), ids=str)
def test_kustomization_resources_and_generated_files_exist(kustomization):
    spec = yaml.safe_load(kustomization.read_text())
    folder = kustomization.parent
    for resource in spec["resources"]:
        assert (folder / resource).exists(), f"{resource} listed in {kustomization} does not exist"
    for generator in spec.get("configMapGenerator", []):
        for file in generator["files"]:
            assert (folder / file).is_file()


def test_every_pod_that_reads_the_secret_volume_can_read_it_as_its_user():
    """Secret files are root's; without fsGroup, uid 10001 could not open a 0400 file and
    the workers, beat and the migrate Job stopped at SECRET_KEY_FILE."""
    pods = {
        name: obj["spec"]["template"]["spec"]
        for (kind, name), obj in _k8s_objects().items()
        if "template" in obj.get("spec", {})
    }
    readers = {
        name: pod
        for name, pod in pods.items()
        if any(volume.get("secret", {}).get("secretName") == "pleura" for volume in pod.get("volumes", []))
    }
    assert sorted(readers) == [
        "pleura-beat",
        "pleura-migrate",
        "pleura-web",
        "pleura-worker",
        "pleura-worker-gpu",
        "pleura-worker-training",
    ]
    for name, pod in readers.items():
        user = pod["securityContext"]
        assert (user["runAsUser"], user["runAsGroup"], user["fsGroup"]) == (10001, 10001, 10001), name
        secret = next(v["secret"] for v in pod["volumes"] if "secret" in v)
        assert secret["defaultMode"] == 0o440, name


def test_secrets_and_certificates_the_readme_puts_in_deploy_stay_out_of_images_and_git():
    for ignore in ("Dockerfile.dockerignore", "Dockerfile.cuda.dockerignore"):
        patterns = (DEPLOY / ignore).read_text().split()
        assert {"deploy/.env", "deploy/secrets", "deploy/tls"} <= set(patterns), ignore
    checked = subprocess.run(
        ["git", "check-ignore", "deploy/.env", "deploy/secrets/django_secret_key", "deploy/tls/tls.key"],
        cwd=DEPLOY.parent,
        capture_output=True,
        text=True,
    )
    assert checked.stdout.split() == ["deploy/.env", "deploy/secrets/django_secret_key", "deploy/tls/tls.key"]


def test_every_kubernetes_object_is_complete_and_deployments_select_their_pods():
    objects = _k8s_objects()
    assert len(objects) == 17
    for (kind, name), obj in objects.items():
        assert obj["apiVersion"] and obj["metadata"]["name"] == name, kind
        if kind == "Deployment":
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= template_labels.items(), name
            assert obj["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_web_probes_use_healthz_and_readyz_and_is_autoscaled_and_protected_from_drains():
    objects = _k8s_objects()
    web = _containers(objects[("Deployment", "pleura-web")])["web"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Probes ask gunicorn's own port: nginx answers /readyz 404 from outside.
    assert web["readinessProbe"]["httpGet"]["port"] == "http" == web["ports"][0]["name"]
    assert {"name": "GUNICORN_WORKER_TMP_DIR", "value": "/dev/shm"} in web["env"]
    assert objects[("HorizontalPodAutoscaler", "pleura-web")]["spec"]["scaleTargetRef"]["name"] == "pleura-web"
    assert objects[("PodDisruptionBudget", "pleura-web")]["spec"]["minAvailable"] == 1
    service = objects[("Service", "pleura-web")]
    ingress = objects[("Ingress", "pleura")]
    assert ingress["spec"]["tls"][0]["secretName"] == "pleura-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]


def test_gpu_worker_requests_a_gpu_and_consumes_only_the_inference_queue():
    worker = _containers(_k8s_objects()[("Deployment", "pleura-worker-gpu")])["worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"] == ["worker-gpu"]
    assert {"name": "CELERY_QUEUES", "value": "inference"} in worker["env"]


def test_beat_is_single_and_migrations_are_a_job():
    objects = _k8s_objects()
    beat = objects[("Deployment", "pleura-beat")]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert _containers(objects[("Job", "pleura-migrate")])["migrate"]["args"] == ["migrate"]


def test_example_overlay_ships_an_example_secret_and_configmap_in_base():
    overlay = DEPLOY / "k8s" / "overlays" / "example"
    secret = _docs(overlay / "secret.example.yaml")[0]
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"secret-key", "database-url", "s3-access-key-id", "s3-secret-access-key"}
    assert _k8s_objects()[("ConfigMap", "pleura")]["data"]["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
    # Listed, not applied: every apply would put the placeholders back over the real Secret.
    assert "secret.example.yaml" not in yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]


def test_compose_runs_every_service_and_the_gpu_worker_under_a_profile():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "web",
        "worker",
        "worker-gpu",
        "beat",
        "migrate",
        "postgres",
        "redis",
        "nginx",
        "prometheus",
        "grafana",
    } <= set(services)
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["CELERY_QUEUES"] == "inference"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for name in ("web", "worker", "worker-gpu", "beat", "migrate"):
        assert services[name]["command"][0] in {"web", "worker", "worker-gpu", "beat", "migrate"}
        assert services[name]["environment"]["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume


def test_both_images_make_the_models_volumes_mount_point_theirs():
    """A new named volume takes its owner from the image's folder; without one it is
    root's, and migrate (uid 10001) could not copy the shipped model in."""
    for image in ("Dockerfile", "Dockerfile.cuda"):
        made = re.search(r"install -d -o pleura -g pleura ([^\n]+)", (DEPLOY / image).read_text()).group(1).split()
        assert "/var/lib/pleura/models" in made, image


def test_compose_keeps_model_versions_on_a_volume_every_process_reads_and_retraining_writes():
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("migrate", "web", "worker", "worker-gpu", "worker-training", "beat"):
        assert services[name]["environment"]["MODEL_WEIGHTS_DIR"] == "/var/lib/pleura/models", name
        assert "models:/var/lib/pleura/models" in services[name]["volumes"], name
    training = services["worker-training"]
    assert training["command"] == ["worker-training"]
    assert "profiles" not in training  # `retrain_model --queue` always finds a worker
    data_mount = training["environment"]["TRAINING_DATA_DIR"]
    assert f"${{PLEURA_TRAINING_DATA:-./training-data}}:{data_mount}:ro" in training["volumes"]


def test_kubernetes_keeps_model_versions_on_a_shared_volume_that_only_migrate_and_retraining_write():
    """Without it retraining wrote candidates into one pod's image folder (and the image's
    is read-only): `retrain_model --queue` had no worker, and no other pod saw a candidate."""
    objects = _k8s_objects()
    assert objects[("ConfigMap", "pleura")]["data"]["MODEL_WEIGHTS_DIR"] == "/var/lib/pleura/models"
    assert objects[("PersistentVolumeClaim", "pleura-models")]["spec"]["accessModes"] == ["ReadWriteMany"]
    writers = {}
    for (kind, name), obj in objects.items():
        if kind not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        app = pod["containers"][0]  # Pleura's own; web's nginx sidecar reads no weights
        mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
        models = mounts["/var/lib/pleura/models"]
        assert claims[models["name"]] == "pleura-models", name
        writers[name] = not models.get("readOnly", False)
    assert sorted(name for name, writes in writers.items() if writes) == ["pleura-migrate", "pleura-worker-training"]
    assert len(writers) == 6


def test_kubernetes_runs_one_training_worker_on_the_training_queue_with_the_training_images():
    training = _k8s_objects()[("Deployment", "pleura-worker-training")]
    assert (training["spec"]["replicas"], training["spec"]["strategy"]["type"]) == (1, "Recreate")
    worker = _containers(training)["worker"]
    assert worker["args"] == ["worker-training"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    data = next(m for m in worker["volumeMounts"] if m["mountPath"] == env["TRAINING_DATA_DIR"])
    assert data["readOnly"] is True
    pod = training["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == data["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "pleura-training-data"


def _entrypoint_with(program: str, command: str, folder) -> str:
    """Run deploy/entrypoint.sh `command` with a `program` on PATH that prints the
    arguments it was given, one call a line; return what it printed."""
    (folder / program).write_text('#!/bin/sh\necho "$@"\n')
    (folder / program).chmod(0o755)
    env = {"PATH": f"{folder}:/usr/bin:/bin", "HOME": str(folder)}
    return subprocess.run(
        ["bash", str(DEPLOY / "entrypoint.sh"), command], env=env, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize(
    ("command", "queues", "concurrency"),
    [("worker", "celery,inference", "2"), ("worker-gpu", "inference", "4"), ("worker-training", "training", "1")],
)
def test_entrypoint_starts_each_worker_on_its_queues(tmp_path, command, queues, concurrency):
    args = _entrypoint_with("celery", command, tmp_path).split()
    assert args[args.index("--queues") + 1] == queues
    assert args[args.index("--concurrency") + 1] == concurrency


def test_migrate_step_also_registers_the_shipped_model(tmp_path):
    assert _entrypoint_with("python", "migrate", tmp_path).splitlines() == [
        "manage.py check --deploy --fail-level WARNING",  # before anything changes
        "manage.py migrate --noinput",
        "manage.py ensure_default_model",
    ]


def test_grafana_dashboard_is_valid_and_covers_the_pipeline():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pleura.json").read_text())
    assert dashboard["uid"] == "pleura-overview"
    assert isinstance(dashboard["schemaVersion"], int)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "pleura-prometheus"
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
    queries = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "django_http_requests_latency_seconds_by_view_method",
        "django_http_responses_total_by_status_total",
        "pleura_queue_depth",
        "pleura_queue_oldest_age_seconds",
        "pleura_queue_wait_seconds",
        "pleura_inference_latency_seconds",
        "pleura_inference_batch_size",
        "pleura_predictions_total",
        "pleura_prediction_failures_total",
        "pleura_pipeline_retries_total",
        'up{job=~"pleura-worker.*"}',
        "DCGM_FI_DEV_GPU_UTIL",
    ):
        assert metric in queries, metric
    datasource = _docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    assert datasource["datasources"][0]["uid"] == "pleura-prometheus"


def test_dashboard_and_alerts_use_only_metrics_the_code_defines():
    from diagnostics import metrics

    defined = {
        metrics.STUDIES_RECEIVED._name,
        metrics.QUEUE_WAIT._name,
        metrics.INFERENCE_LATENCY._name,
        metrics.BATCH_SIZE._name,
        metrics.PREDICTIONS._name,
        metrics.FAILURES._name,
        metrics.RETRIES._name,
    }
    assert defined == {
        "pleura_studies_received",
        "pleura_queue_wait_seconds",
        "pleura_inference_latency_seconds",
        "pleura_inference_batch_size",
        "pleura_predictions",
        "pleura_prediction_failures",
        "pleura_pipeline_retries",
    }
    alerts = _docs(DEPLOY / "prometheus" / "alerts.yml")[0]
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    assert {
        "PleuraQueueBackingUp",
        "PleuraPredictionFailureRate",
        "PleuraNoWorker",
        "PleuraPipelineStalled",
        "PleuraNoUsableModel",
        "PleuraHighRequestLatency",
    } <= names


def test_compose_references_resolve_to_defined_services_secrets_and_volumes():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services, secrets, volumes = compose["services"], set(compose["secrets"]), set(compose["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for secret in service.get("secrets", []):
            assert secret in secrets, f"{name} uses unknown secret {secret}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in volumes, f"{name} mounts unknown volume {source}"
    assert services["nginx"]["environment"]["PLEURA_UPSTREAM"] == "web:8000"
    template_vars = set(re.findall(r"\$\{(PLEURA_[A-Z_]+)\}", (DEPLOY / "nginx" / "pleura.conf.template").read_text()))
    assert template_vars <= set(services["nginx"]["environment"])


def test_example_overlay_only_touches_objects_of_the_base():
    overlay = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "example" / "kustomization.yaml").read_text())
    objects = _k8s_objects()
    for replica in overlay["replicas"]:
        assert ("Deployment", replica["name"]) in objects
    for patch in overlay["patches"]:
        assert (patch["target"]["kind"], patch["target"]["name"]) in objects
    images = {
        c["image"] for (kind, _), o in objects.items() if kind in ("Deployment", "Job") for c in _containers(o).values()
    }
    assert {"pleura", "pleura-gpu"} <= images
    assert {image["name"] for image in overlay["images"]} == {"pleura", "pleura-gpu"}


def test_the_images_collectstatic_step_runs_with_only_what_the_dockerfile_gives_it(tmp_path):
    """Production settings require DATABASE_URL and REDIS_URL: the build step that collects
    the static files must give placeholders for them, or the image does not build."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    image_env = dict(re.findall(r"^\s+(DJANGO_SETTINGS_MODULE)=(\S+)", dockerfile, re.M))
    collect = r"^RUN ((?:[A-Z_]+=\S+\s+(?:\\\n\s*)?)+)python manage\.py collectstatic"
    step = re.search(collect, dockerfile, re.M).group(1)
    build_env = dict(part.split("=", 1) for part in step.replace("\\\n", " ").split())
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "STATIC_ROOT": str(tmp_path / "static")}

    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=DEPLOY.parent,
        env={**env, **image_env, **build_env},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert image_env == {"DJANGO_SETTINGS_MODULE": "config.settings.production"}
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "staticfiles.json").is_file()


def test_every_job_the_alerts_and_dashboard_name_is_a_job_of_compose_and_of_kubernetes():
    """On Kubernetes the pods were scraped under a generic job, so PleuraWebDown and
    PleuraNoWorker, which name pleura-web and pleura-worker, fired for good (ops review).
    Both Kubernetes recipes name a job after the pod's app.kubernetes.io/name."""
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    text += (DEPLOY / "grafana" / "dashboards" / "pleura.json").read_text().replace('\\"', '"')
    named = set(re.findall(r'job(?:=|=~)"([^"]+)"', text))
    alternatives = {name for pattern in named for name in re.split(r"[|]", pattern.replace(".*", ""))}

    compose_jobs = {job["job_name"] for job in _docs(DEPLOY / "prometheus" / "prometheus.yml")[0]["scrape_configs"]}
    pods = {
        doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for path in (DEPLOY / "k8s" / "base").glob("*.yaml")
        for doc in _docs(path)
        if doc and doc.get("kind") == "Deployment"
    }
    for name in alternatives:
        assert any(job.startswith(name) for job in compose_jobs), name
        assert any(pod.startswith(name) for pod in pods), name

    (scrape,) = _docs(DEPLOY / "prometheus" / "kubernetes.yml")[0]["scrape_configs"]
    assert {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "job"} in scrape[
        "relabel_configs"
    ]
    monitors = _docs(DEPLOY / "k8s" / "monitoring" / "podmonitors.yaml")
    assert {monitor["spec"]["jobLabel"] for monitor in monitors} == {"app.kubernetes.io/name"}


def test_stopping_a_pod_or_container_lets_its_work_in_hand_finish():
    """The web's 30 s default equalled gunicorn's graceful timeout, and Compose's 10 s cut
    uploads in flight; workers were killed before a task's hard time limit (ops review)."""
    from django.conf import settings

    graceful = int(re.search(r"graceful_timeout = (\d+)", (DEPLOY / "gunicorn.conf.py").read_text()).group(1))
    deployments = {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for path in (DEPLOY / "k8s" / "base").glob("*.yaml")
        for doc in _docs(path)
        if doc and doc.get("kind") == "Deployment"
    }
    web = deployments["pleura-web"]
    pause = max(int(c["lifecycle"]["preStop"]["exec"]["command"][-1]) for c in web["containers"])
    assert web["terminationGracePeriodSeconds"] > pause + graceful
    for name in ("pleura-worker", "pleura-worker-gpu"):
        assert deployments[name]["terminationGracePeriodSeconds"] > settings.CELERY_TASK_TIME_LIMIT

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert int(compose["web"]["stop_grace_period"].rstrip("s")) > graceful
    for name in ("worker", "worker-gpu"):
        assert int(compose[name]["stop_grace_period"].rstrip("s")) > settings.CELERY_TASK_TIME_LIMIT
    # Docker's default json-file driver never rotates: every service's logs are bounded.
    assert all(service["logging"]["options"]["max-size"] for service in compose.values())
