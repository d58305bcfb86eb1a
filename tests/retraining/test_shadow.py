"""Shadow mode: a candidate's predictions are stored beside the active model's and never shown."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from diagnostics import pipeline
from diagnostics.models import Prediction, Study
from diagnostics.reviews import current_prediction
from hospital.models import AuditEvent
from mlcore import registry, retraining
from mlcore.models import ModelVersion
from tests.mlcore.helpers import copy_model_dir, tiny_model_dir
from tests.retraining.conftest import REVIEW_IMAGES, stored_study

pytestmark = pytest.mark.slow


@pytest.fixture
def candidate(active_model, loop_settings, tmp_path_factory) -> ModelVersion:
    folder = copy_model_dir(tiny_model_dir(tmp_path_factory), loop_settings / "cand", name="pleura-tiny-cand")
    version = registry.register_from_dir(folder, parent=active_model)
    # Make the two models tell apart on every study: the candidate sees everything as pneumonia.
    ModelVersion.objects.filter(pk=version.pk).update(threshold=0.0)
    version.refresh_from_db()
    return version


def test_shadow_switch_is_audited_and_only_for_candidates(candidate, active_model, superuser):
    call_command("shadow_model", candidate.name, "--on", "--actor", superuser.email, stdout=io.StringIO())
    candidate.refresh_from_db()
    assert candidate.shadow is True
    call_command("shadow_model", candidate.name, "--off", stdout=io.StringIO())
    candidate.refresh_from_db()
    assert candidate.shadow is False
    events = AuditEvent.objects.filter(action=retraining.SHADOW_CHANGED).order_by("id")
    assert [(e.actor_user, e.target_id, e.detail) for e in events] == [
        (superuser, str(candidate.code), {"name": candidate.name, "shadow": True, "replaced": []}),
        (None, str(candidate.code), {"name": candidate.name, "shadow": False, "replaced": []}),
    ]
    with pytest.raises(CommandError, match="only a candidate can run in shadow mode"):
        call_command("shadow_model", active_model.name, "--on")
    assert AuditEvent.objects.filter(action=retraining.SHADOW_CHANGED).count() == 2


def test_shadow_predictions_are_stored_and_never_shown(
    candidate, active_model, hospital_a, doctor, radiologist, client_for
):
    retraining.set_shadow(candidate, True)
    study = stored_study(hospital_a, REVIEW_IMAGES["normal"][0], status=Study.Status.QUEUED)
    assert pipeline.predict_studies([study.pk]) == [study.pk]

    predictions = {p.model_version.name: p for p in Prediction.objects.filter(study=study)}
    assert set(predictions) == {active_model.name, candidate.name}
    assert (predictions[candidate.name].is_shadow, predictions[active_model.name].is_shadow) == (True, False)
    assert predictions[candidate.name].label == "pneumonia"  # threshold 0: it always says pneumonia
    assert current_prediction(study) == predictions[active_model.name]

    for user in (doctor, radiologist):
        page = client_for(user).get(f"/studies/{study.code}/").content.decode()
        assert active_model.name in page
        assert candidate.name not in page
    # The performance page is where the shadow model's agreement is measured.
    from diagnostics.reviews import save_review

    save_review(study=study, radiologist=radiologist, verdict="agree", correct_label="normal")
    assert 'data-version="pleura-tiny-cand"' in client_for(radiologist).get("/models/performance/").content.decode()


def test_promotion_ends_shadow_mode(candidate, active_model):
    retraining.set_shadow(candidate, True)
    registry.activate(candidate)
    candidate.refresh_from_db()
    assert (candidate.status, candidate.shadow) == ("active", False)
