"""register_model, promote_model (gate, override, rollback), the audit trail and the one-active rule."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore import registry
from mlcore.engine import InferenceEngine
from mlcore.models import ModelVersion
from mlcore.network import WeightsMismatchError
from tests.mlcore.helpers import TINY_NAME, compare_with_active, copy_model_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_model(weights_dir, tiny_model):
    """A trained model folder under MODEL_WEIGHTS_DIR, with the validation metrics given."""

    def make(name: str, **metrics) -> str:
        folder = copy_model_dir(tiny_model, weights_dir / name, name=name)
        description = json.loads((folder / "model.json").read_text())
        description["validation_metrics"].update(metrics)
        (folder / "model.json").write_text(json.dumps(description))
        return str(folder)

    return make


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _events(action, name: str | None = None) -> list[AuditEvent]:
    """Events of one kind, optionally only those about the version `name`."""
    events = AuditEvent.objects.filter(action=action).order_by("id")
    if name is not None:
        events = events.filter(target_id=str(ModelVersion.objects.get(name=name).code))
    return list(events)


def test_register_model_records_a_candidate_with_its_hash_and_metrics(weights_dir, tiny_model):
    output = _run("register_model", str(weights_dir / TINY_NAME))
    description = json.loads((tiny_model / "model.json").read_text())

    version = ModelVersion.objects.get()
    assert output == f"registered {TINY_NAME} (candidate), sha256 {description['weights_sha256']}\n"
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.weights_path == f"{TINY_NAME}/weights.pt"
    assert version.weights_sha256 == description["weights_sha256"]
    assert version.threshold == description["threshold"]
    assert version.temperature == description["temperature"]
    assert version.metrics == description["validation_metrics"]
    assert version.training_data == description["training_data"]
    assert version.card["name"] == TINY_NAME
    [event] = _events(Action.MODEL_REGISTERED)
    assert (event.target_type, event.target_id, event.detail) == (
        "modelversion",
        str(version.code),
        {"name": TINY_NAME},
    )


def test_register_model_with_activate_and_a_parent(make_model):
    _run("register_model", make_model("v1"))
    _run("register_model", make_model("v2"), "--parent", "v1", "--activate")
    v2 = ModelVersion.objects.get(name="v2")
    assert v2.status == ModelVersion.Status.ACTIVE
    assert v2.parent.name == "v1"
    assert ModelVersion.objects.active() == v2


def test_register_model_refuses_a_folder_that_is_not_a_training_output(tmp_path, weights_dir):
    with pytest.raises(CommandError, match=r"model\.json not found"):
        call_command("register_model", str(tmp_path / "nowhere"))
    assert ModelVersion.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_register_model_refuses_weights_whose_hash_does_not_match(weights_dir):
    with open(weights_dir / TINY_NAME / "weights.pt", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(CommandError, match="does not match the sha256 recorded"):
        call_command("register_model", str(weights_dir / TINY_NAME))
    assert ModelVersion.objects.count() == 0


def test_register_model_refuses_a_name_twice_and_an_unknown_parent(make_model):
    folder = make_model("v1")
    _run("register_model", folder)
    with pytest.raises(CommandError, match="a model version named 'v1' already exists"):
        call_command("register_model", folder)
    with pytest.raises(CommandError, match="no model version named 'ghost'"):
        call_command("register_model", folder, "--name", "v9", "--parent", "ghost")
    assert list(ModelVersion.objects.values_list("name", flat=True)) == ["v1"]


def test_first_promotion_activates_and_is_audited(make_model):
    _run("register_model", make_model("v1", roc_auc=0.9, sensitivity=0.95))
    assert _run("promote_model", "v1", "--reason", "first model") == "promoted v1\n"

    version = ModelVersion.objects.get()
    assert version.status == ModelVersion.Status.ACTIVE
    assert version.promoted_at is not None
    [event] = _events(Action.MODEL_PROMOTED)
    assert event.detail == {
        "name": "v1",
        "previous": None,
        "override": False,
        "gate_failures": [],
        "reason": "first model",
    }
    assert (event.outcome, event.actor_user) == ("success", None)


@pytest.fixture
def active_v1(make_model):
    _run("register_model", make_model("v1", roc_auc=0.9, sensitivity=0.95), "--activate")
    return ModelVersion.objects.get(name="v1")


def test_gate_refuses_a_worse_candidate_and_audits_the_refusal(active_v1, make_model):
    _run("register_model", make_model("v2", roc_auc=0.85, sensitivity=0.97))
    compare_with_active("v2")
    with pytest.raises(CommandError, match=r"v2 was not promoted: roc_auc 0.8500 is worse than .* 0.9000"):
        call_command("promote_model", "v2")

    assert ModelVersion.objects.active().name == "v1"
    assert ModelVersion.objects.get(name="v2").status == ModelVersion.Status.CANDIDATE
    [event] = _events(Action.MODEL_PROMOTION_REFUSED)
    assert event.outcome == "denied"
    assert event.detail == {
        "name": "v2",
        "failures": ["roc_auc 0.8500 is worse than the active version's 0.9000"],
    }
    assert _events(Action.MODEL_PROMOTED, "v2") == []


def test_gate_accepts_a_better_candidate_and_retires_the_active_one(active_v1, make_model):
    _run("register_model", make_model("v2", roc_auc=0.93, sensitivity=0.95))
    compare_with_active("v2")
    assert _run("promote_model", "v2") == "promoted v2\n"

    assert dict(ModelVersion.objects.values_list("name", "status")) == {"v1": "retired", "v2": "active"}
    [event] = _events(Action.MODEL_PROMOTED, "v2")
    assert event.detail == {"name": "v2", "previous": "v1", "override": False, "gate_failures": [], "reason": ""}
    assert event.target_id == str(ModelVersion.objects.get(name="v2").code)


def test_override_needs_a_superuser_actor(active_v1, make_model, doctor, superuser):
    _run("register_model", make_model("v2", roc_auc=0.80, sensitivity=0.90))
    compare_with_active("v2")
    with pytest.raises(CommandError, match="--override needs --actor EMAIL of a superuser") as refused:
        call_command("promote_model", "v2", "--override")
    # Printed as "CommandError: ...", not under a private class's name (fresh-machine review).
    assert type(refused.value) is CommandError
    with pytest.raises(CommandError, match="only a superuser may override: it skips the promotion gate"):
        call_command("promote_model", "v2", "--override", "--actor", doctor.email)
    assert ModelVersion.objects.active().name == "v1"
    assert _events(Action.MODEL_PROMOTED, "v2") == []

    _run("promote_model", "v2", "--override", "--actor", superuser.email.upper(), "--reason", "urgent fix")
    assert ModelVersion.objects.active().name == "v2"
    [event] = _events(Action.MODEL_PROMOTED, "v2")
    assert event.actor_user == superuser
    assert event.detail == {
        "name": "v2",
        "previous": "v1",
        "override": True,
        "gate_failures": [
            "roc_auc 0.8000 is worse than the active version's 0.9000",
            "sensitivity 0.9000 is worse than the active version's 0.9500",
        ],
        "reason": "urgent fix",
    }


def test_rollback_reactivates_a_retired_version_and_is_audited(active_v1, make_model, superuser):
    _run("register_model", make_model("v2", roc_auc=0.95, sensitivity=0.96))
    compare_with_active("v2")
    _run("promote_model", "v2")
    assert _run("promote_model", "v1", "--rollback", "--actor", superuser.email, "--reason", "drift") == (
        "rolled back to v1\n"
    )

    assert dict(ModelVersion.objects.values_list("name", "status")) == {"v1": "active", "v2": "retired"}
    [event] = _events(Action.MODEL_ROLLED_BACK)
    assert event.actor_user == superuser
    assert event.detail == {"name": "v1", "previous": "v2", "reason": "drift"}


def test_a_version_whose_weights_changed_since_registration_is_neither_promoted_nor_rolled_back_to(
    active_v1, make_model
):
    """Only the file's presence was checked: a promoted version that no worker's engine
    would load (its hash is checked there) left every study waiting with no model (worker
    review)."""
    _run("register_model", make_model("v2", roc_auc=0.95, sensitivity=0.96))
    compare_with_active("v2")
    with open(registry.resolve_weights_path(ModelVersion.objects.get(name="v2")), "ab") as weights:
        weights.write(b"\0")

    with pytest.raises(CommandError, match="do not match the sha256 it was registered with"):
        call_command("promote_model", "v2")
    assert ModelVersion.objects.active().name == "v1"


def test_rollback_refuses_a_version_that_was_never_active(active_v1, make_model, superuser):
    _run("register_model", make_model("v2"))
    with pytest.raises(CommandError, match="v2 was never active; promote it instead"):
        call_command("promote_model", "v2", "--rollback", "--actor", superuser.email, "--reason", "drift")
    with pytest.raises(CommandError, match="v1 is already the active version"):
        call_command("promote_model", "v1")
    with pytest.raises(CommandError, match="no model version named 'v7'"):
        call_command("promote_model", "v7")
    assert ModelVersion.objects.active().name == "v1"
    assert _events(Action.MODEL_ROLLED_BACK) == []


def test_database_allows_only_one_active_version(active_v1):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            name="rogue",
            architecture="resnet18",
            image_size=64,
            weights_path="rogue/weights.pt",
            weights_sha256="0" * 64,
            threshold=0.5,
            status=ModelVersion.Status.ACTIVE,
        )
    assert list(ModelVersion.objects.filter(status="active").values_list("name", flat=True)) == ["v1"]


def test_engine_refuses_weights_that_do_not_match_the_registered_hash(active_v1, weights_dir):
    spec = registry.spec_for(active_v1)
    assert InferenceEngine(spec, device="cpu").spec.name == "v1"
    with open(spec.weights_path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsMismatchError, match="does not match registered"):
        InferenceEngine(spec, device="cpu")
    registry.engines.clear()
    with pytest.raises(registry.RegistryError, match="does not match registered"):
        registry.get_active_engine("cpu")


def test_active_engine_is_loaded_once_per_process(active_v1):
    registry.engines.clear()
    version, engine = registry.get_active_engine("cpu")
    again_version, again = registry.get_active_engine("cpu")
    assert version == again_version == active_v1
    assert engine is again
    registry.engines.clear()


def test_serving_versions_are_the_active_one_and_the_newest_shadow_candidate_in_one_query(
    active_v1, django_assert_num_queries
):
    def version(name: str, **fields) -> ModelVersion:
        fields.setdefault("status", ModelVersion.Status.CANDIDATE)
        weights = {"weights_path": f"{name}.pt", "weights_sha256": "0" * 64, "threshold": 0.5}
        return ModelVersion.objects.create(name=name, architecture="resnet18", image_size=64, **weights, **fields)

    version("not-shadowed")
    version("old-shadow", shadow=True)
    newest_shadow = version("new-shadow", shadow=True)
    version("retired", status=ModelVersion.Status.RETIRED, shadow=True)

    with django_assert_num_queries(1):
        assert ModelVersion.objects.serving() == (active_v1, newest_shadow)

    ModelVersion.objects.filter(pk=active_v1.pk).update(status=ModelVersion.Status.RETIRED)
    ModelVersion.objects.filter(shadow=True).update(shadow=False)
    assert ModelVersion.objects.serving() == (None, None)
    with pytest.raises(registry.RegistryError, match="no active model version"):
        registry.get_serving_engine("cpu")


def test_register_model_does_not_activate_past_the_gate_when_a_version_is_active(active_v1, make_model):
    """--activate would serve doctors a model never compared with the one they have."""
    with pytest.raises(CommandError, match="v1 is active: register without --activate, then compare_model NAME"):
        call_command("register_model", make_model("v2", roc_auc=0.5, sensitivity=0.1), "--activate")

    assert ModelVersion.objects.active().name == "v1"
    assert not ModelVersion.objects.filter(name="v2").exists()


def test_an_override_needs_a_reason_for_the_audit_trail(active_v1, make_model, superuser):
    _run("register_model", make_model("v2", roc_auc=0.80, sensitivity=0.90))
    compare_with_active("v2")

    with pytest.raises(CommandError, match="--override needs --reason"):
        call_command("promote_model", "v2", "--override", "--actor", superuser.email)

    assert ModelVersion.objects.active().name == "v1"


def _trained_without_the_locked_set(weights_dir, tmp_path, name: str) -> Path:
    """A model trained anew on the base data less the active version's locked validation set."""
    from mlcore.retraining import base_training_folder, locked_validation
    from tests.mlcore.helpers import SMALL_DATA, train_tiny_model

    locked = locked_validation(weights_dir / TINY_NAME / "split.json", SMALL_DATA)
    base_training_folder(SMALL_DATA, locked, tmp_path / "base")
    return train_tiny_model(weights_dir / name, name=name, seed=5, data=tmp_path / "base")


def test_a_model_trained_anew_is_measured_against_the_active_one_and_carries_it_to_the_gate(
    weights_dir, tiny_model, settings, tmp_path
):
    """A new shipped default is trained, not fine-tuned: registered, `compare_model`
    measures it as `retrain_model` measures its candidates, and stores it for the gate."""
    from mlcore.promotion import gate_failures
    from mlcore.retraining import evaluate_samples, locked_validation
    from tests.mlcore.helpers import SMALL_DATA

    settings.TRAINING_DATA_DIR = SMALL_DATA
    call_command("ensure_default_model", stdout=io.StringIO())
    active = ModelVersion.objects.active()
    fresh = _trained_without_the_locked_set(weights_dir, tmp_path, "fresh")

    registered = _run("register_model", str(fresh))
    printed = json.loads(_run("compare_model", "fresh", "--device", "cpu"))

    assert f"next: compare_model fresh, which measures it against {TINY_NAME} for the gate" in registered
    version = ModelVersion.objects.get(name="fresh")
    locked = locked_validation(weights_dir / TINY_NAME / "split.json", SMALL_DATA)
    assert version.metrics["comparison"] == printed
    assert printed["against"] == {"name": TINY_NAME, "code": str(active.code), "weights_sha256": active.weights_sha256}
    assert printed["locked_validation_images"] == len(locked) > 0
    assert printed["candidate"] == json.loads(json.dumps(evaluate_samples(registry.get_engine(version), locked)))
    assert printed["active"] == json.loads(json.dumps(evaluate_samples(registry.get_engine(active), locked)))
    new, old = printed["candidate"], printed["active"]
    failures = gate_failures(version, active)
    assert [failure for failure in failures if "worse" in failure] == [
        f"{metric} {new[metric]:.4f} is worse than the active version's {old[metric]:.4f}"
        for metric in ("roc_auc", "sensitivity", "specificity")
        if new[metric] < old[metric]
    ]
    event = AuditEvent.objects.get(action="model.compared")
    assert (event.target_id, event.detail["against"], event.detail["gate_failures"]) == (
        str(version.code),
        TINY_NAME,
        failures,
    )
    with pytest.raises(CommandError, match="register the folder first"):
        call_command("compare_model", str(fresh), stdout=io.StringIO())


def test_a_comparison_json_beside_the_weights_is_never_taken_for_a_measure(weights_dir, tiny_model, settings, tmp_path):
    """Registration stored the file as it was: edited by hand to raise the candidate's
    figures, it promoted weights the gate had refused (ML review)."""
    from tests.mlcore.helpers import SMALL_DATA

    settings.TRAINING_DATA_DIR = SMALL_DATA
    call_command("ensure_default_model", stdout=io.StringIO())
    active = ModelVersion.objects.active()
    folder = _trained_without_the_locked_set(weights_dir, tmp_path, "edited")
    flattering = {"roc_auc": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    (folder / "comparison.json").write_text(
        json.dumps({"candidate": flattering, "active": active.metrics, "against": {"name": active.name,
                    "weights_sha256": active.weights_sha256}})
    )  # fmt: skip

    output = _run("register_model", str(folder))

    assert "comparison.json beside the weights was not read" in output
    version = ModelVersion.objects.get(name="edited")
    assert "comparison" not in version.metrics
    with pytest.raises(CommandError, match="was never compared with the active version"):
        call_command("promote_model", "edited", stdout=io.StringIO())


def test_a_model_that_trained_on_the_locked_set_is_not_compared_there(weights_dir, tiny_model, settings):
    """Trained with another seed on the same data, 642 of the 786 locked images were in its
    training set, and compare_model judged it on them (ML review)."""
    from mlcore.retraining import locked_validation
    from tests.mlcore.helpers import SMALL_DATA, train_tiny_model

    settings.TRAINING_DATA_DIR = SMALL_DATA
    call_command("ensure_default_model", stdout=io.StringIO())
    folder = train_tiny_model(weights_dir / "leaky", name="leaky", seed=5)
    locked = {sample.relative_name for sample in locked_validation(weights_dir / TINY_NAME / "split.json", SMALL_DATA)}
    overlap = len(set(json.loads((folder / "split.json").read_text())["train"]["files"]) & locked)
    _run("register_model", str(folder))

    with pytest.raises(CommandError) as refused:
        call_command("compare_model", "leaky", stdout=io.StringIO())

    assert overlap > 0
    assert str(refused.value).startswith(
        f"leaky trained on {overlap} of the {len(locked)} locked validation images of {TINY_NAME}: measured there"
    )
    assert "comparison" not in ModelVersion.objects.get(name="leaky").metrics


def test_a_model_that_gives_no_numbers_is_refused_in_words_not_a_traceback(weights_dir, tiny_model, settings, tmp_path):
    """NaN logits reached the metrics' library, and compare_model ended in its traceback (ML review)."""
    import torch

    from mlcore.network import build_network, load_weights, save_weights
    from tests.mlcore.helpers import SMALL_DATA

    settings.TRAINING_DATA_DIR = SMALL_DATA
    call_command("ensure_default_model", stdout=io.StringIO())
    folder = _trained_without_the_locked_set(weights_dir, tmp_path, "broken")
    description = json.loads((folder / "model.json").read_text())
    network = load_weights(build_network(description["architecture"]), folder / description["weights"])
    with torch.no_grad():
        network.fc.bias.fill_(float("nan"))
    description["weights_sha256"] = save_weights(network, folder / description["weights"])
    (folder / "model.json").write_text(json.dumps(description))
    _run("register_model", str(folder))

    with pytest.raises(CommandError) as refused:
        call_command("compare_model", "broken", stdout=io.StringIO())

    assert re.fullmatch(
        r"broken gives no probability for (\d+) of \1 images \(its weights hold values that are not numbers\), "
        r"so it cannot be measured",
        str(refused.value),
    )
    assert "comparison" not in ModelVersion.objects.get(name="broken").metrics


@pytest.mark.parametrize(
    ("who", "reason", "refusal"),
    [
        (None, "drift", "--rollback needs --actor EMAIL of a superuser"),
        ("hospital_admin", "drift", "only a superuser may rollback: it skips the promotion gate"),
        ("superuser", " ", "--rollback needs --reason: why the gate is skipped, for the audit trail"),
    ],
)
def test_a_rollback_skips_the_gate_so_it_needs_a_superuser_and_a_reason(
    request, active_v1, make_model, who, reason, refusal
):
    """A candidate the gate had refused, overridden once and rolled back from, came back
    to doctors by a bare rollback, with no one named and no reason (learning-loop review)."""
    _run("register_model", make_model("v2", roc_auc=0.95, sensitivity=0.96))
    compare_with_active("v2", roc_auc_gain=0.001)
    _run("promote_model", "v2")
    actor = ["--actor", request.getfixturevalue(who).email] if who else []

    with pytest.raises(CommandError, match=re.escape(refusal)):
        call_command("promote_model", "v1", "--rollback", *actor, "--reason", reason)

    assert ModelVersion.objects.active().name == "v2"
    assert _events(Action.MODEL_ROLLED_BACK) == []
    # The try is kept in the trail, with who tried where they were named.
    [refused] = _events(Action.MODEL_PROMOTION_REFUSED)
    assert (refused.outcome, refused.detail["failures"], refused.actor_user) == (
        "denied",
        [refusal],
        request.getfixturevalue(who) if who else None,
    )


def test_a_retrained_candidate_is_not_compared_again_without_its_reviewed_hold_out(
    weights_dir, tiny_model, settings, tmp_path
):
    """Measured again on the locked set alone, a candidate refused on reviewed cases lost
    that refusal and was promotable without an override (diff review)."""
    from tests.mlcore.helpers import SMALL_DATA

    settings.TRAINING_DATA_DIR = SMALL_DATA
    call_command("ensure_default_model", stdout=io.StringIO())
    _run("register_model", str(_trained_without_the_locked_set(weights_dir, tmp_path, "retrained")))
    version = ModelVersion.objects.get(name="retrained")
    refused_on_reviews = {"reviewed_holdout": {"images": 32}, "candidate": {}, "active": {}}
    version.metrics = {**version.metrics, "comparison": refused_on_reviews}
    version.training_data = {**version.training_data, "lineage": {"parent": TINY_NAME}}
    version.save()

    with pytest.raises(CommandError, match="was retrained from reviews and compared then"):
        call_command("compare_model", "retrained", stdout=io.StringIO())

    assert ModelVersion.objects.get(name="retrained").metrics["comparison"] == refused_on_reviews
