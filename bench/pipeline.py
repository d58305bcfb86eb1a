"""End-to-end pipeline benchmark: REST upload -> Celery worker -> stored prediction.

Starts gunicorn and one Celery worker on loopback against PostgreSQL and Redis, posts
real radiographs from the shared training folder through `POST /api/v1/studies/` with
an integration key, and waits for every prediction. Reports:

- idle: one study at a time, upload-to-prediction p50/p95 (target: p95 <= 1 s on CPU);
- load: N studies posted at once, end-to-end images/s and p50/p95 latency, in
  `--rounds` rounds, each from its own hospital (so no round reuses another's results);
- the raw batched throughput of the same model on this machine, measured in the same
  run by bench/inference.py, and the ratio (target >= 0.8). Raw is the sustained rate
  (images over time, as the end-to-end figure is) of the load's own images, measured
  before the first round and after every round: raw, load, raw, load, ... raw. Each
  round's ratio sets it beside the raw measures either side of it, and the run's ratio
  is all rounds' images over all their time against all raw measures pooled the same
  way. On a shared VM the host's speed drifts by a fifth from one minute to the next;
  interleaving spreads that drift over both sides of the ratio instead of letting one
  slow minute decide it. The raw measures run while the services are up and idle, after
  the idle phase has warmed the worker. The best single raw batch is reported beside,
  with the ratio.

Two layouts. By default web, worker, PostgreSQL and Redis share every core, so each
upload's CPU is taken from the model. `--inference-cpus 1` gives the Celery worker
those cores alone (the web server gets the rest), as deploy/ separates web and
inference machines; the raw figure is then measured on the same cores with as many
torch threads, so the ratio compares the pipeline with the model on the same hardware.
With `--worker-processes N` the raw figure is N processes measured at once, each with
the share of threads a pool process takes: one process with every thread would be a
slower machine than the worker's pool (its Python runs on one core), and the ratio
would flatter the pipeline.
With `--pin-services` the local PostgreSQL and Redis servers are moved onto the web
cores for the run (and put back after it): left floating, the scheduler runs them on
the worker's core too, where every upload's inserts take turns with the model.

    .venv/bin/python -m bench.pipeline --n 64 --write
    .venv/bin/python -m bench.pipeline --n 64 --inference-cpus 1 --write
    .venv/bin/python -m bench.pipeline --n 256 --inference-cpus 1 --pin-services --rounds 3 --write

The training radiographs are 224x224 JPEGs of about 6 KB; an EMR sends DICOM instances
of megabytes. `--dicom-size 2048` posts DICOM copies of the same images instead
(bench/dicom_load.py: enlarged to 2048 pixels a side, 12 bits stored in 16, as raw
`application/dicom` bodies), and writes a section of its own; raw is then measured on
the copies as the worker decodes them.

Without a shipped model (mlcore/weights/<name>/model.json) it uses a randomly
initialised network of the same architecture and input size: the same timings.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
DOC = ROOT / "docs" / "benchmarks.md"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/pleura_bench"
DEFAULT_MODEL_DIR = ROOT / "mlcore" / "weights" / "pleura-resnet18-v1"
IDLE_RUNS = 20
# Batches of one raw measure in bench/pipeline_costs.py; bench/pipeline.py's raw measures
# each take the load's images once, so they last about as long as a load round.
RAW_BATCHES = 32
DEFAULT_ROUNDS = 3


def _fresh_database(url: str) -> None:
    """Every run starts from an empty database: no dead rows or stale statistics left by the last."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    if not name.startswith("pleura_bench"):
        raise SystemExit(f"refusing to recreate {name!r}: the benchmark database's name starts with pleura_bench")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _configure_django(args, workdir: Path) -> dict:
    _fresh_database(args.database_url)
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DEBUG": "false",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "CELERY_BROKER_URL": args.redis_url,
        "MEDIA_ROOT": str(workdir / "media"),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
        "API_KEY_THROTTLE_RATE": "100000/min",
        "LOG_LEVEL": "WARNING",
    }
    (workdir / "prometheus").mkdir()
    os.environ.update(env)
    import django

    django.setup()
    return env


def _prepare_database(model_dir: Path | None, workdir: Path):
    """Tables, a hospital with an integration key, the model version to serve."""
    from django.core.management import call_command

    from mlcore.models import ModelVersion
    from mlcore.network import build_network, save_weights

    call_command("migrate", verbosity=0)
    raw_key = integration_key("bench")
    ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).update(status=ModelVersion.Status.RETIRED)
    if model_dir is not None:
        description = json.loads((model_dir / "model.json").read_text())
        weights, sha256 = model_dir / description["weights"], description["weights_sha256"]
        size, threshold, name = description["image_size"], description["threshold"], description["name"]
    else:
        weights, size, threshold, name = workdir / "random.pt", 224, 0.5, "random-resnet18-224"
        sha256 = save_weights(build_network("resnet18"), weights)
    ModelVersion.objects.filter(name=f"bench-{name}").delete()
    version = ModelVersion.objects.create(
        name=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        architecture="resnet18",
        image_size=size,
        weights_path=str(weights),
        weights_sha256=sha256,
        threshold=threshold,
        status=ModelVersion.Status.ACTIVE,
    )
    return version, raw_key


def integration_key(slug: str) -> str:
    """A new integration key of the benchmark hospital `slug` (created if need be).

    Each load round posts as a hospital of its own: results are reused only within a
    hospital, so every round's studies are predicted afresh, like the first round's.
    """
    from hospital.models import Hospital, IntegrationKey

    hospital, _ = Hospital.objects.get_or_create(slug=slug, defaults={"name": f"Benchmark Hospital {slug}"})
    _, raw_key = IntegrationKey.generate(hospital=hospital, name=f"bench-{uuid.uuid4().hex[:6]}")
    return raw_key


def raw_images(images: list[Path]) -> list:
    """The load's images, decoded once for all the raw measures, as the worker decodes
    them (a DICOM copy windowed to its 8-bit grayscale)."""
    from diagnostics.imaging import decode_upload

    return [decode_upload(path.read_bytes()).gray for path in images]


def raw_batches_for(images: int, processes: int = 1) -> int:
    """Batches of MAX_BATCH that take each of the load's images once, rounded up to as many
    for every measuring process, so that none of them runs alone at the end."""
    from diagnostics.pipeline import MAX_BATCH

    per_process = -(-images // (MAX_BATCH * processes))
    return max(1, per_process) * processes


def raw_throughput(version, grays: list, cpus: set[int], batches: int = RAW_BATCHES, measuring=None) -> dict:
    """bench/inference.py on the same model, batch = the pipeline's MAX_BATCH, heatmaps included,
    on the cores the worker will have, over the images the load phase posts (`raw_images`);
    in `measuring` (`inference.MeasuringProcesses`) when the worker's pool has several processes."""
    import torch

    from bench import inference
    from diagnostics.pipeline import MAX_BATCH
    from mlcore import registry

    if measuring is not None:
        return measuring.measure(grays, MAX_BATCH, repeats=batches)
    everywhere, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    try:
        engine = registry.get_engine(version)
        result = inference.measure_throughput(engine, grays, MAX_BATCH, with_heatmap=True, repeats=batches)
        device = {"device": engine.device.type, "device_description": inference.describe_device(engine)}
    finally:
        registry.engines.clear()
        os.sched_setaffinity(0, everywhere)
        torch.set_num_threads(threads)
    return {**result, **device, "processes": 1, "torch_threads": len(cpus)}


def combined_raw(measures: list[dict]) -> dict:
    """Raw measures taken at several moments of a run, as one figure.

    Sustained: all images over all the time of every measure, so a host that slowed down
    or sped up during the run weighs in as long as it did. Best: the fastest batch of any.
    """
    images = sum(raw["batch_size"] * raw["repeats"] for raw in measures)
    seconds = sum(raw["batch_size"] * raw["repeats"] / raw["sustained_images_per_second"] for raw in measures)
    return {
        **measures[0],
        "images_per_second": max(raw["images_per_second"] for raw in measures),
        "sustained_images_per_second": round(images / seconds, 2),
        "repeats": sum(raw["repeats"] for raw in measures),
        "sustained_each": [raw["sustained_images_per_second"] for raw in measures],
    }


def _start_services(env: dict, port: int, workdir: Path, layout: dict) -> list[subprocess.Popen]:
    full_env = {**os.environ, **env}
    log = open(workdir / "services.log", "ab")  # noqa: SIM115 - lives as long as the services
    web = [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}"]
    web += ["-w", str(layout["web_workers"]), "--threads", "4"]
    worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "celery,inference"]
    worker += ["--concurrency", str(layout["worker_processes"]), "--loglevel", "WARNING"]
    worker += ["--without-gossip", "--without-mingle"]
    return [
        subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=log, preexec_fn=partial(os.sched_setaffinity, 0, cpus)
        )
        for command, cpus in ((web, layout["web_cpus"]), (worker, layout["inference_cpus"]))
    ]


def _stop(services: list[subprocess.Popen], grace: float = 30) -> None:
    """Ask the services to stop; kill the ones still running after `grace` seconds, so a
    worker slow to shut down never costs the figures already measured."""
    for process in services:
        process.terminate()
    for process in services:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"{process.args[2]} still running {grace:.0f} s after SIGTERM: killed", file=sys.stderr)
            process.kill()
            process.wait()


def _layout(inference_cpus: str | None, web_workers: int, worker_processes: int) -> dict:
    """Which cores the web server and the worker may use, and how many processes each runs."""
    everywhere = os.sched_getaffinity(0)
    processes = {"web_workers": web_workers, "worker_processes": worker_processes}
    if not inference_cpus:
        return {"name": "shared", "web_cpus": everywhere, "inference_cpus": everywhere, **processes}
    chosen = {int(cpu) for cpu in inference_cpus.split(",")}
    rest = everywhere - chosen
    if not chosen <= everywhere or not rest:
        raise SystemExit(f"--inference-cpus must leave at least one of the cores {sorted(everywhere)} for the web")
    return {"name": "split", "web_cpus": rest, "inference_cpus": chosen, **processes}


def _service_processes(redis_url: str) -> dict[str, list[int]]:
    """The processes of the PostgreSQL server (postmaster and its children) and of the
    Redis server this run talks to, where they run on this machine and can be seen."""
    import redis
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    found = {}
    postmaster = _parent_pid(backend)
    if postmaster and _command_name(postmaster).startswith("postgres"):
        found["PostgreSQL"] = [postmaster, *_children(postmaster)]
    redis_server = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    if _command_name(redis_server).startswith("redis"):
        found["Redis"] = [redis_server]
    return found


def _proc(pid: int, name: str) -> str:
    try:
        return (Path("/proc") / str(pid) / name).read_text()
    except OSError:  # another machine, container or user: not ours to move
        return ""


def _command_name(pid: int) -> str:
    return _proc(pid, "comm").strip()


def _parent_pid(pid: int) -> int:
    stat = _proc(pid, "stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else 0


def _children(pid: int) -> list[int]:
    return [int(child) for child in _proc(pid, f"task/{pid}/children").split()]


def peak_resident_mib(pid: int) -> float | None:
    """The most resident memory the process has held (VmHWM), in MiB; None if unreadable."""
    for line in _proc(pid, "status").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _pin_services(redis_url: str, cpus: set[int]) -> tuple[dict[int, set[int]], list[str]]:
    """Move PostgreSQL and Redis onto `cpus` (new backends inherit the postmaster's
    cores); returns each moved process's former cores, and which services moved."""
    former: dict[int, set[int]] = {}
    moved = []
    for service, pids in _service_processes(redis_url).items():
        try:
            for pid in pids:
                former[pid] = os.sched_getaffinity(pid)
                os.sched_setaffinity(pid, cpus)
        except (PermissionError, ProcessLookupError) as exc:
            print(f"could not move {service} onto CPUs {sorted(cpus)}: {exc}", file=sys.stderr)
            continue
        moved.append(service)
    return former, moved


def _unpin_services(former: dict[int, set[int]]) -> None:
    for pid, cpus in former.items():
        with contextlib.suppress(PermissionError, ProcessLookupError):  # a backend that has exited since
            os.sched_setaffinity(pid, cpus)


class Uploader:
    """Posts radiographs to the REST API as an EMR's interface engine does, and as nginx
    does in front of gunicorn (`keepalive` in deploy/nginx): each thread keeps its HTTP
    connection open from one study to the next. A new TCP connection per upload (as
    urllib makes) costs both the load generator and the web server CPU on every study:
    in a web-only loop on the VM, keeping connections cut the generator's CPU from 0.59
    to 0.40 ms an upload, and the web core answered 5% more uploads a second."""

    # gunicorn closes a connection left idle for its keep-alive time (2 s by default);
    # one idle for longer than this is reopened before use rather than found closed.
    IDLE_REOPEN_S = 1.0

    def __init__(self, url: str, key: str):
        address = urllib.parse.urlsplit(url)
        self._host, self._port = address.hostname, address.port
        self._key = key
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, image: Path) -> str:
        body, content_type = self._body(image)
        connection = self._connection()
        connection.request(
            "POST",
            "/api/v1/studies/",
            body=body,
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": content_type},
        )
        response = connection.getresponse()
        payload = response.read()
        self._local.used_at = time.monotonic()
        if response.will_close:
            connection.close()  # the next request opens a new one
        if response.status not in (200, 202):
            raise RuntimeError(f"the upload was answered {response.status}: {payload[:200]!r}")
        return json.loads(payload)["id"]

    @staticmethod
    def _body(image: Path) -> tuple[bytes, str]:
        """A DICOM file as the raw body, as an EMR sends an instance; a JPEG as a form's file."""
        if image.suffix == ".dcm":
            return image.read_bytes(), "application/dicom"
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{image.name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + image.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return body, f"multipart/form-data; boundary={boundary}"

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
            self._local.connection, self._local.used_at = connection, time.monotonic()
            with self._lock:
                self._opened.append(connection)
        elif time.monotonic() - self._local.used_at > self.IDLE_REOPEN_S:
            connection.close()
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the web server did not start; see services.log")


def _completed_at(codes: list[str], timeout: float) -> dict[str, float]:
    from diagnostics.models import Study

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = Study.objects.filter(code__in=codes, status__in=["completed", "failed"])
        if rows.count() == len(codes):
            return {str(code): at.timestamp() for code, at in rows.values_list("code", "completed_at")}
        time.sleep(0.05)
    raise SystemExit(f"predictions did not arrive within {timeout:.0f} s")


def _wait_worker_quiet(redis_url: str, timeout: float = 120) -> float:
    """Wait until the worker has taken and acknowledged every message; return the seconds waited.

    Messages a draining worker has not taken yet (one per upload without coalesced
    wake-ups, most of them for studies it has already predicted) are still work for its
    cores: a raw measure must not share them with that.
    """
    import redis
    from django.conf import settings

    from diagnostics.pipeline import PREDICT_TASK

    queue = settings.CELERY_TASK_ROUTES[PREDICT_TASK]["queue"]
    broker, started = redis.Redis.from_url(redis_url), time.monotonic()
    while time.monotonic() - started < timeout:
        if not broker.llen(queue) and not broker.hlen("unacked"):
            return round(time.monotonic() - started, 2)
        time.sleep(0.05)
    raise SystemExit(f"the worker still had messages after {timeout:.0f} s")


def _worker_model_time(codes: list[str], seconds: float) -> dict:
    """How the worker spent the load phase: batch sizes, and time inside the model.

    Each prediction records its batch's size and the engine's time for the whole batch
    (Grad-CAM and heatmap PNGs included), so latency / batch size summed over the
    predictions is the worker's time in the model.
    """
    from diagnostics.models import Prediction

    predictions = Prediction.objects.filter(study__code__in=codes)
    rows = list(predictions.values_list("batch_size", "latency_ms"))
    model_s = sum(latency_ms / size for size, latency_ms in rows) / 1000
    batches = sum(1 / size for size, _ in rows)
    busy_s = _covered_seconds(predictions.values_list("study__started_at", "study__completed_at"))
    return {
        "busy_s": round(busy_s, 2),
        "batches": round(batches),
        "mean_batch_size": round(len(rows) / batches, 2) if batches else 0,
        "model_s": round(model_s, 2),
        "model_share": round(model_s / seconds, 2),
        # Share of the load phase in which some study was being predicted: well below 1,
        # the worker waited for uploads; near 1, the worker was the bottleneck.
        "worker_busy_share": round(busy_s / seconds, 2),
    }


def _covered_seconds(intervals) -> float:
    """Length of the union of (start, end) datetime intervals."""
    covered, reach = 0.0, None
    for start, end in sorted((s.timestamp(), e.timestamp()) for s, e in intervals if s and e):
        if reach is None or start > reach:
            covered, reach = covered + end - start, end
        elif end > reach:
            covered, reach = covered + end - reach, end
    return covered


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_s": round(statistics.median(ordered), 3), "p95_s": round(p95, 3)}


def _idle(url: str, key: str, images: list[Path], runs: int) -> dict:
    uploader = Uploader(url, key)
    # One study first, not counted: the worker's first prediction pays for lazy imports
    # and the first queries, which no steady-state upload does.
    _completed_at([uploader.post(images[-1])], 60)
    runs_seen = []
    for image in images[:runs]:
        started = time.time()
        code = uploader.post(image)
        answered = time.time()
        runs_seen.append(_idle_run(code, started, answered, _completed_at([code], 60)[code]))
    uploader.close()
    latencies = [run["total_s"] for run in runs_seen]
    slowest = sorted(runs_seen, key=lambda run: run["total_s"], reverse=True)[:3]
    return {"runs": runs, **_percentiles(latencies), "latencies_s": latencies, "slowest": slowest}


def _idle_run(code: str, started: float, answered: float, completed: float) -> dict:
    """Where one idle study's time went: the upload's answer, waiting for the worker, the worker."""
    from diagnostics.models import Study

    queued_at, started_at = Study.objects.values_list("queued_at", "started_at").get(code=code)
    return {
        "total_s": round(completed - started, 3),
        "upload_answered_s": round(answered - started, 3),
        "waiting_for_worker_s": round(started_at.timestamp() - queued_at.timestamp(), 3),
        "in_worker_s": round(completed - started_at.timestamp(), 3),
    }


def cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of these cores since boot, from /proc/stat; None where
    there is no /proc/stat. Busy is everything but idle and iowait."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal: guest time is inside user already.
            ticks = [int(value) for value in fields[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the cores' time they were busy between two `cpu_jiffies` readings."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def post_all(url: str, key: str, images: list[Path], clients: int) -> tuple[dict[str, float], float]:
    """Post every image over `clients` kept-open connections of this process.

    Returns when each study was posted, by code, and this process's CPU seconds.
    """
    started: dict[str, float] = {}
    uploader = Uploader(url, key)

    def post(image: Path) -> None:
        at = time.time()
        started[uploader.post(image)] = at

    cpu = time.process_time()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(post, images))
    finally:
        uploader.close()
    return started, time.process_time() - cpu


def _generator_ready(seconds: float) -> int:
    time.sleep(seconds)  # held, so that each of the first calls goes to a process of its own
    return os.getpid()


class GeneratorProcesses:
    """The load generator in several processes (`--generator-processes`), spawned once per
    run, each posting its share of a round's images over its share of the connections.

    An EMR fleet is many programs, not one: a single Python process, its threads taking
    turns under one GIL, could become the limit before the web server does. On the lent
    H100 machine it did not: one process spent 0.49-0.79 ms of CPU per upload, and
    neither 48 connections instead of 24 nor four processes raised the upload rate
    (docs/benchmarks.md, fourth visit). The processes inherit this process's cores, the
    web cores.
    """

    def __init__(self, processes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.processes = processes
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        # Started now, not inside the first round's timing.
        pids = set(self._pool.map(_generator_ready, [0.5] * processes))
        if len(pids) != processes:
            raise SystemExit(f"only {len(pids)} of {processes} load generator processes started")

    def post_all(self, url: str, key: str, images: list[Path], clients: int) -> tuple[dict[str, float], float]:
        threads = max(1, clients // self.processes)
        shares = [images[index :: self.processes] for index in range(self.processes)]
        started, cpu = {}, 0.0
        for share_started, share_cpu in self._pool.map(partial(post_all, url, key, clients=threads), shares):
            started.update(share_started)
            cpu += share_cpu
        return started, cpu

    def close(self) -> None:
        self._pool.shutdown()


def _load(url: str, key: str, images: list[Path], clients: int, layout: dict, generator=None) -> dict:
    web_before, worker_before = cpu_jiffies(layout["web_cpus"]), cpu_jiffies(layout["inference_cpus"])
    first = time.time()
    if generator is None:
        started, client_cpu = post_all(url, key, images, clients)
    else:
        started, client_cpu = generator.post_all(url, key, images, clients)
    uploads_done = time.time() - first
    web_after = cpu_jiffies(layout["web_cpus"])
    done = _completed_at(list(started), 600)
    worker_after = cpu_jiffies(layout["inference_cpus"])
    latencies = [done[code] - at for code, at in started.items()]
    seconds = max(done.values()) - first
    return {
        **_worker_model_time(list(started), seconds),
        "images": len(images),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(images) / seconds, 2),
        # When the last upload was answered: web and worker share this machine's cores.
        "uploads_done_s": round(uploads_done, 2),
        # The load generator stands for an EMR on another machine, yet runs on the web cores.
        "client_cpu_ms_per_upload": round(client_cpu * 1000 / len(images), 2),
        # Which side sets the pace: web cores near 1 while uploads are in flight, or the
        # worker's cores near 1 until the last prediction. Meaningful with split cores.
        "web_cpus_busy_during_uploads": busy_share(web_before, web_after),
        "worker_cpus_busy": busy_share(worker_before, worker_after),
        **_percentiles(latencies),
        "latencies_s": latencies,
    }


def _round(load: dict, raw: dict) -> dict:
    """One load round beside the raw measures either side of it."""
    return {
        **{name: value for name, value in load.items() if name != "latencies_s"},
        "raw_sustained_images_per_s": raw["sustained_images_per_second"],
        "raw_sustained_before_and_after": raw["sustained_each"],
        "ratio_to_raw": round(load["images_per_s"] / raw["sustained_images_per_second"], 2),
    }


def pooled_load(loads: list[dict]) -> dict:
    """All rounds as one load phase: all images over all the time, latencies of all studies."""
    images, seconds = sum(load["images"] for load in loads), sum(load["seconds"] for load in loads)
    batches = sum(load["batches"] for load in loads)
    model_s = sum(load["model_s"] for load in loads)
    busy_s = sum(load["busy_s"] for load in loads)
    return {
        "rounds": len(loads),
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2),
        **_percentiles([latency for load in loads for latency in load["latencies_s"]]),
        "batches": batches,
        "mean_batch_size": round(images / batches, 2) if batches else 0,
        "model_s": round(model_s, 2),
        "model_share": round(model_s / seconds, 2),
        "worker_busy_share": round(busy_s / seconds, 2),
    }


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="pleura-bench-"))
    try:
        return _run(args, workdir)
    finally:
        # The stored originals and heatmaps, and the DICOM copies: 4.4 GB a run with
        # --dicom-size 2048. services.log stays, for a run that went wrong.
        for bulky in ("media", "dicom"):
            shutil.rmtree(workdir / bulky, ignore_errors=True)


def _run(args, workdir: Path) -> dict:
    env = _configure_django(args, workdir)
    model_dir = Path(args.model_dir) if args.model_dir and (Path(args.model_dir) / "model.json").is_file() else None
    version, key = _prepare_database(model_dir, workdir)
    images = sorted((TRAIN / "PNEUMONIA").glob("*.jpeg"))[: args.n]
    images += sorted((TRAIN / "NORMAL").glob("*.jpeg"))[: IDLE_RUNS + 1]  # idle set: distinct pixels
    if args.dicom_size:
        from bench.dicom_load import write_dicom_copies

        images = write_dicom_copies(images, workdir / "dicom", args.dicom_size)
    layout = _layout(args.inference_cpus, args.web_workers, args.worker_processes)
    grays = raw_images(images[: args.n])

    processes = layout["worker_processes"]
    # By default two connections per gunicorn process, as an EMR's interface engine would keep open.
    clients = args.clients or 2 * args.web_workers
    url = f"http://127.0.0.1:{args.port}"
    # Whatever fails part way, what was started is stopped and what was moved is put back.
    with contextlib.ExitStack() as cleanup:
        measuring = None
        if processes > 1:
            from bench.inference import MeasuringProcesses
            from mlcore.registry import spec_for

            measuring = MeasuringProcesses(spec_for(version), processes=processes, cpus=layout["inference_cpus"])
            cleanup.callback(measuring.close)

        def raw() -> dict:
            return raw_throughput(
                version, grays, layout["inference_cpus"], raw_batches_for(args.n, processes), measuring=measuring
            )

        former, pinned = _pin_services(args.redis_url, layout["web_cpus"]) if args.pin_services else ({}, [])
        cleanup.callback(_unpin_services, former)
        services = _start_services(env, args.port, workdir, layout)
        cleanup.callback(_stop, services)
        # The load generator stands for the EMR: it must not take the worker's cores.
        os.sched_setaffinity(0, layout["web_cpus"])
        generator = None
        if args.generator_processes > 1:
            generator = GeneratorProcesses(args.generator_processes)
            cleanup.callback(generator.close)
        _wait_ready(url)
        # The idle phase comes first: its warm-up study waits for the worker to load the
        # model, so no raw measure shares the worker's cores with a starting worker.
        idle = _idle(url, key, images[-IDLE_RUNS - 1 :], IDLE_RUNS)
        _wait_worker_quiet(args.redis_url)
        raws, loads, rounds = [raw()], [], []
        for number in range(1, args.rounds + 1):
            key = integration_key(f"bench-round-{number}")
            load = _load(url, key, images[: args.n], clients, layout, generator)
            load["worker_settle_s"] = _wait_worker_quiet(args.redis_url)
            raws.append(raw())
            loads.append(load)
            rounds.append(_round(load, combined_raw(raws[-2:])))
        # What CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB is set against (config/settings/base.py).
        worker_peaks = [peak_resident_mib(pid) for pid in _children(services[1].pid)]
    raw_pooled, load_pooled = combined_raw(raws), pooled_load(loads)
    return {
        "model": version.name if model_dir else "random-initialised resnet18, 224 px",
        "uploads": upload_format(args.dicom_size),
        "dicom_size": args.dicom_size,
        "layout": layout["name"],
        "web_cpus": sorted(layout["web_cpus"]),
        "web_workers": layout["web_workers"],
        "clients": clients,
        "generator_processes": args.generator_processes,
        "worker_processes": layout["worker_processes"],
        "inference_cpus": sorted(layout["inference_cpus"]),
        "services_on_web_cpus": pinned,
        "machine_cpus": os.cpu_count(),
        "worker_device": raw_pooled["device"],
        "worker_device_description": raw_pooled["device_description"],
        "raw_processes": raw_pooled["processes"],
        "raw_torch_threads": raw_pooled["torch_threads"],
        "raw_batch_size": raw_pooled["batch_size"],
        "raw_measures": len(raws),
        "raw_batches": raw_pooled["repeats"],
        "raw_sustained_images_per_s": raw_pooled["sustained_images_per_second"],
        "raw_sustained_each": raw_pooled["sustained_each"],
        "raw_best_batch_images_per_s": raw_pooled["images_per_second"],
        "idle": idle,
        "load": load_pooled,
        "rounds": rounds,
        "ratio_to_raw": round(load_pooled["images_per_s"] / raw_pooled["sustained_images_per_second"], 2),
        "round_ratios": [load_round["ratio_to_raw"] for load_round in rounds],
        "ratio_to_raw_best_batch": round(load_pooled["images_per_s"] / raw_pooled["images_per_second"], 2),
        "worker_pool_peak_rss_mib": worker_peaks,
    }


LAYOUTS = {
    "shared": "web, worker, PostgreSQL and Redis share all cores",
    "split": "the worker has its own cores, the web server the others",
}


def section_key(result: dict) -> str:
    """One section per layout, worker device and machine size: a GPU run does not replace a CPU run,
    nor a run with the database moved off the worker's cores one without."""
    key = f"pipeline:{result['layout']}:{result['worker_device']}:{result['machine_cpus']}cpu"
    if result["worker_processes"] != 1:
        key += f":{result['worker_processes']}proc"
    key += ":pinned" if result.get("services_on_web_cpus") else ""
    return key + (f":dicom{result['dicom_size']}" if result.get("dicom_size") else "")


def upload_format(dicom_size: int) -> str:
    if dicom_size:
        from bench import dicom_load

        return dicom_load.describe(dicom_size)
    return "the training radiographs as posted files: 224x224 JPEGs of about 6 KB"


def render(result: dict, command: str) -> str:
    """The body of this run's section of docs/benchmarks.md."""
    idle, load = result["idle"], result["load"]
    return "\n".join(
        [
            f"## Pipeline, {result['layout']} cores, worker on {result['worker_device']}, "
            f"{result['machine_cpus']}-core machine: upload to prediction (bench/pipeline.py)",
            "",
            f"Command: `{command}` (gunicorn {result['web_workers']}x4 threads, "
            f"{result['clients']} load connections "
            f"from {result['generator_processes']} process(es), a Celery worker of "
            f"{result['worker_processes']} process(es), PostgreSQL, Redis, loopback).",
            f"Layout: {LAYOUTS[result['layout']]}: web on CPUs {result['web_cpus']}, "
            f"worker on CPUs {result['inference_cpus']}; "
            + (
                f"{' and '.join(result['services_on_web_cpus'])} moved onto the web CPUs for the run."
                if result.get("services_on_web_cpus")
                else "PostgreSQL and Redis left where the scheduler puts them."
            ),
            f"Worker device: {result['worker_device_description']}.",
            f"Model: {result['model']}.",
            f"Uploads: {result.get('uploads', upload_format(0))}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| idle, one study at a time: p50 / p95 upload-to-prediction | {idle['p50_s']} s / {idle['p95_s']} s |",
            f"| load: {load['rounds']} rounds of {load['images'] // load['rounds']} studies posted at once, "
            f"all images over all their time | {load['images_per_s']} images/s |",
            f"| load: p50 / p95 upload-to-prediction | {load['p50_s']} s / {load['p95_s']} s |",
            f"| load: worker batches, mean size | {load['batches']}, {load['mean_batch_size']} |",
            f"| load: worker time in the model (share of the load phases) "
            f"| {load['model_s']} s ({load['model_share']}) |",
            f"| load: share of the load phases with a batch in the worker | {load['worker_busy_share']} |",
            f"| raw batched model throughput on the worker's CPUs (batch {result['raw_batch_size']}, "
            f"Grad-CAM, {result['raw_processes']} process(es) of {result['raw_torch_threads']} torch threads "
            f"at once), sustained: {result['raw_measures']} "
            f"measures of {result['raw_batches'] // result['raw_measures']} batches, before the first round "
            f"and after each | {result['raw_sustained_images_per_s']} images/s "
            f"({', '.join(str(rate) for rate in result['raw_sustained_each'])}) |",
            f"| raw, best single batch | {result['raw_best_batch_images_per_s']} images/s |",
            f"| end-to-end / raw sustained (target >= 0.8) | {result['ratio_to_raw']} |",
            f"| end-to-end / raw best batch | {result['ratio_to_raw_best_batch']} |",
            f"| worker pool processes' peak resident memory at the end | "
            f"{', '.join(f'{peak} MiB' for peak in result.get('worker_pool_peak_rss_mib', []))} |",
            "",
            "| round | images/s | p95 | last upload answered | web CPUs busy while uploading | model share "
            "| worker busy | worker CPUs busy | worker busy with messages after the last prediction "
            "| raw sustained before, after | round / raw |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {number} | {load_round['images_per_s']} | {load_round['p95_s']} s "
                f"| {load_round['uploads_done_s']} s of {load_round['seconds']} s "
                f"| {load_round['web_cpus_busy_during_uploads']} | {load_round['model_share']} "
                f"| {load_round['worker_busy_share']} | {load_round['worker_cpus_busy']} "
                f"| {load_round['worker_settle_s']} s "
                f"| {', '.join(str(rate) for rate in load_round['raw_sustained_before_and_after'])} "
                f"| {load_round['ratio_to_raw']} |"
                for number, load_round in enumerate(result["rounds"], start=1)
            ),
        ]
    )


def service_arguments(parser: argparse.ArgumentParser, *, n_help: str, redis_db: int) -> None:
    """The options both pipeline benches take: study count, services, model, --write."""
    parser.add_argument("--n", type=int, default=64, help=n_help)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=f"redis://127.0.0.1:6379/{redis_db}")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")


def report(result: dict, args, module: str, section: str, render_section) -> None:
    """Print the result; with --write, replace its section of docs/benchmarks.md."""
    print(json.dumps(result, indent=2))
    if args.write:
        from bench.inference import write_section

        command = f"python -m {module} " + " ".join(sys.argv[1:])
        write_section(DOC, section, render_section(result, command))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    service_arguments(parser, n_help="studies posted at once in the load phase", redis_db=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="load rounds, each between two raw measures")
    parser.add_argument(
        "--inference-cpus", default=None, help="comma-separated cores for the worker alone (e.g. 1); default: shared"
    )
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes")
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="connections posting at once in the load phase (default: 2 per gunicorn process)",
    )
    parser.add_argument(
        "--generator-processes", type=int, default=1, help="load generator processes sharing the connections"
    )
    parser.add_argument(
        "--worker-processes", type=int, default=1, help="Celery pool processes; they share the worker's cores"
    )
    parser.add_argument(
        "--dicom-size",
        type=int,
        default=0,
        help="post DICOM copies of the images, enlarged to this many pixels a side (e.g. 2048), instead of the JPEGs",
    )
    parser.add_argument(
        "--pin-services",
        action="store_true",
        help="move the local PostgreSQL and Redis servers onto the web cores for the run (needs the right to)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    result = run(args)
    report(result, args, "bench.pipeline", section_key(result), render)


if __name__ == "__main__":
    main()
