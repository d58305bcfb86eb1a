"""The promotion gate on a real like-for-like comparison, the superuser override, and rollback."""

from __future__ import annotations

import io
import json
import shutil
import threading

import pytest
import torch
from django.core.management import CommandError, call_command

from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore import registry, retraining
from mlcore.models import ModelVersion
from mlcore.network import build_network, file_sha256, save_weights
from tests.conftest import needs_postgresql
from tests.mlcore.helpers import TINY_IMAGE_SIZE, compare_with_active, copy_model_dir

pytestmark = pytest.mark.slow


def constant_model(weights_dir, active: ModelVersion, threshold: float = 0.9) -> ModelVersion:
    """A real network that says 0.5 for every image: ROC AUC 0.5 on any set. At the
    threshold 0.9 it calls all of them normal (sensitivity 0, specificity 1); at 0.1 all
    pneumonia (sensitivity 1, specificity 0). It keeps the active model's locked split."""
    network = build_network("resnet18")
    with torch.no_grad():
        network.fc.weight.zero_()
        network.fc.bias.zero_()
    folder = weights_dir / "constant"
    folder.mkdir()
    sha256 = save_weights(network, folder / "weights.pt")
    shutil.copy(registry.resolve_weights_path(active).parent / retraining.SPLIT_FILE, folder)
    return ModelVersion.objects.create(
        name="pleura-constant",
        architecture="resnet18",
        image_size=TINY_IMAGE_SIZE,
        weights_path="constant/weights.pt",
        weights_sha256=sha256,
        threshold=threshold,
    )


def compare_for_gate(candidate: ModelVersion, active: ModelVersion) -> dict:
    """What retraining stores: both on the locked validation set of the active model."""
    from django.conf import settings

    locked = retraining.locked_validation(
        registry.resolve_weights_path(active).parent / retraining.SPLIT_FILE, settings.TRAINING_DATA_DIR
    )
    comparison = retraining.compare(registry.get_engine(candidate), registry.get_engine(active), locked, [])
    comparison["against"] = {  # as retrain() records
        "name": active.name, "code": str(active.code), "weights_sha256": active.weights_sha256,
    }  # fmt: skip
    candidate.metrics = {**candidate.metrics, "comparison": comparison}
    candidate.save(update_fields=["metrics"])
    return comparison


def test_gate_refuses_a_candidate_worse_on_the_locked_validation_set(active_model, loop_settings):
    worse = constant_model(loop_settings, active_model)
    comparison = compare_for_gate(worse, active_model)
    assert comparison["candidate"]["roc_auc"] == 0.5
    assert comparison["candidate"]["sensitivity"] == 0.0
    assert comparison["active"]["sensitivity"] >= 0.95  # its threshold was chosen on this very set

    with pytest.raises(CommandError, match=r"was not promoted: .*sensitivity 0\.0000 is worse"):
        call_command("promote_model", worse.name)

    assert ModelVersion.objects.active() == active_model
    assert ModelVersion.objects.get(pk=worse.pk).status == ModelVersion.Status.CANDIDATE
    event = AuditEvent.objects.get(action=Action.MODEL_PROMOTION_REFUSED)
    assert (event.target_id, event.outcome) == (str(worse.code), "denied")
    assert event.detail["name"] == worse.name
    assert any(f.startswith("sensitivity 0.0000 is worse") for f in event.detail["failures"])


def test_a_candidate_ahead_only_by_chance_is_refused_and_an_override_then_a_rollback_are_audited(
    active_model, loop_settings, superuser
):
    # The weak model calls every radiograph pneumonia; the trained one is a candidate again.
    # On the six locked images it leads, but no lead on six images is beyond chance.
    constant = constant_model(loop_settings, active_model, threshold=0.1)
    registry.activate(constant)
    trained = ModelVersion.objects.get(pk=active_model.pk)
    ModelVersion.objects.filter(pk=trained.pk).update(status=ModelVersion.Status.CANDIDATE)
    trained.refresh_from_db()
    comparison = compare_for_gate(trained, constant)
    assert comparison["candidate"]["roc_auc"] > comparison["active"]["roc_auc"] == 0.5
    assert comparison["candidate"]["sensitivity"] >= comparison["active"]["sensitivity"] == 1.0
    assert comparison["candidate"]["specificity"] >= comparison["active"]["specificity"] == 0.0
    paired = comparison["paired"]
    assert paired["normal"]["p_value"] > 0.05 and paired["roc_auc_gain_lower_95"] <= 0

    with pytest.raises(CommandError, match="on any metric beyond chance"):
        call_command("promote_model", trained.name)
    call_command("promote_model", trained.name, "--override", "--actor", superuser.email, "--reason", "drill")
    assert ModelVersion.objects.active() == trained
    assert ModelVersion.objects.get(pk=constant.pk).status == ModelVersion.Status.RETIRED
    promoted = AuditEvent.objects.filter(action=Action.MODEL_PROMOTED).order_by("-id").first()
    assert (promoted.detail["override"], promoted.detail["reason"], len(promoted.detail["gate_failures"])) == (
        True,
        "drill",
        1,
    )

    call_command(
        "promote_model", constant.name, "--rollback", "--actor", superuser.email, "--reason", "regression reported"
    )
    assert ModelVersion.objects.active() == constant
    assert ModelVersion.objects.get(pk=trained.pk).status == ModelVersion.Status.RETIRED
    rolled_back = AuditEvent.objects.get(action=Action.MODEL_ROLLED_BACK)
    assert rolled_back.detail == {"name": constant.name, "previous": trained.name, "reason": "regression reported"}


def test_only_a_superuser_may_override_the_gate_and_the_override_is_audited(
    active_model, loop_settings, superuser, hospital_admin
):
    worse = constant_model(loop_settings, active_model)
    compare_for_gate(worse, active_model)

    with pytest.raises(CommandError, match="only a superuser may override"):
        call_command("promote_model", worse.name, "--override", "--actor", hospital_admin.email)
    assert ModelVersion.objects.active() == active_model

    call_command("promote_model", worse.name, "--override", "--actor", superuser.email, "--reason", "drill")
    assert ModelVersion.objects.active() == worse
    event = AuditEvent.objects.filter(action=Action.MODEL_PROMOTED).order_by("-id").first()
    assert event.actor_user == superuser
    assert event.detail["override"] is True
    assert event.detail["reason"] == "drill"
    assert len(event.detail["gate_failures"]) == 2  # AUC and sensitivity both worse


def _shift_logits(weights, by: float) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["fc.bias"] += by
    torch.save(state, weights)
    description = json.loads((weights.parent / "model.json").read_text())
    description["weights_sha256"] = file_sha256(weights)
    (weights.parent / "model.json").write_text(json.dumps(description))


@pytest.mark.django_db(transaction=True)
def test_two_promotions_at_once_gate_the_second_against_the_first(active_model, loop_settings, monkeypatch):
    """Both candidates were compared with the active version. Gated before the lock, both
    passed and the second replaced the first without ever being compared with it
    (learning-loop and concurrency reviews); now the second is judged against the first."""
    needs_postgresql("two promotions in two transactions at once")
    from django.db import connection

    source = registry.resolve_weights_path(active_model).parent
    for shift, name in enumerate(("cand-a", "cand-b"), start=1):
        folder = copy_model_dir(source, loop_settings / name, name=name)
        _shift_logits(folder / "weights.pt", shift * 1e-6)  # weights of its own, the same ranking
        registry.register_from_dir(folder)
        compare_with_active(name, roc_auc_gain=0.001)
    both_ready = threading.Barrier(2, timeout=30)
    real_activate = registry.activate

    def activate_together(*args, **kwargs):
        both_ready.wait()  # each has read the same active version by now
        return real_activate(*args, **kwargs)

    monkeypatch.setattr(registry, "activate", activate_together)
    outcomes = {}

    def promote(name):
        try:
            call_command("promote_model", name, stdout=io.StringIO())
            outcomes[name] = "promoted"
        except CommandError as exc:
            outcomes[name] = str(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=promote, args=(name,)) for name in ("cand-a", "cand-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    winner = ModelVersion.objects.active().name
    loser = ({"cand-a", "cand-b"} - {winner}).pop()
    assert outcomes == {
        winner: "promoted",
        loser: f"{loser} was not promoted: {loser} was compared with pleura-tiny, not with the active version "
        f"{winner}; retrain from {winner} to compare with it",
    }
    assert ModelVersion.objects.get(name=loser).status == ModelVersion.Status.CANDIDATE
    assert list(
        AuditEvent.objects.filter(action=Action.MODEL_PROMOTED).order_by("id").values_list("detail__name", flat=True)
    ) == [
        "pleura-tiny",
        winner,
    ]


def test_a_version_is_not_registered_without_its_event(active_model, loop_settings, monkeypatch):
    """Registered and then audited outside one transaction, a failed audit write left a
    candidate nobody had a record of (audit review)."""
    from django.db import DatabaseError

    from hospital import audit

    folder = copy_model_dir(loop_settings / active_model.name, loop_settings / "unrecorded", name="unrecorded")

    def refuse(*args, **kwargs):
        raise DatabaseError("could not extend file")

    monkeypatch.setattr(audit, "record", refuse)
    with pytest.raises(DatabaseError):
        registry.register_from_dir(folder)
    assert not ModelVersion.objects.filter(name="unrecorded").exists()
