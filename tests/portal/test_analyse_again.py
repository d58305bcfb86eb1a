"""Analyse again: a failed study's page offers doctors and radiologists to queue it again
with the image Pleura holds, when another try may mend the failure (a worker lost too
often, the model's own error). A study an EMR sent has no file on the doctor's desk to
send again. A missing or undecodable file needs a new copy, so no button for those: the
study's failure code decides, not the wording of the message shown."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnostics import pipeline, tasks
from diagnostics.models import Study
from hospital.models import AuditEvent

GAVE_UP = pipeline.GAVE_UP_MESSAGE.format(attempts=3)
BUTTON = '<button type="submit" class="btn btn--small">Analyse again</button>'


@pytest.fixture
def failed_study(make_study, hospital_a):
    def make(code: str = Study.Failure.GAVE_UP, reason: str = GAVE_UP) -> Study:
        return make_study(
            hospital_a,
            status=Study.Status.FAILED,
            failure_code=code,
            failure_reason=reason,
            attempts=3,
            completed_at=timezone.now(),
        )

    return make


def analyse_again(client, study: Study):
    return client.post(reverse("diagnostics:study_analyse_again", args=[study.code]))


@pytest.mark.parametrize("who", ["doctor", "radiologist"])
def test_a_clinician_queues_a_failed_study_again_and_is_shown_it_queued(
    who, request, client_for, failed_study, django_capture_on_commit_callbacks
):
    user = request.getfixturevalue(who)
    study = failed_study()
    client = client_for(user)
    assert BUTTON in client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = analyse_again(client, study)

    assert (response.status_code, response["Location"]) == (302, f"/studies/{study.code}/")
    study.refresh_from_db()
    assert (study.status, study.failure_code, study.failure_reason, study.attempts, study.completed_at) == (
        "queued", "", "", 0, None,
    )  # fmt: skip
    assert [(callback.func, callback.args) for callback in callbacks] == [(tasks.enqueue_prediction, (study.pk,))]
    event = AuditEvent.objects.get(action="study.analysed_again")
    assert (event.actor_user, event.target_id, event.detail) == (user, str(study.code), {"failure": GAVE_UP})
    page = client.get(response["Location"]).content.decode()
    assert "Waiting for analysis; this page updates by itself." in page
    assert BUTTON not in page


def test_a_second_click_changes_nothing(client_for, doctor, failed_study):
    study = failed_study()
    analyse_again(client_for(doctor), study)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING, attempts=1)

    response = analyse_again(client_for(doctor), study)

    assert response.status_code == 302
    assert Study.objects.values_list("status", "attempts").get(pk=study.pk) == ("processing", 1)
    assert AuditEvent.objects.filter(action="study.analysed_again").count() == 1


# The messages as an older release worded them: the code, not the words, decides.
@pytest.mark.parametrize(
    "code, reason",
    [
        (Study.Failure.MISSING_FILE, pipeline.MISSING_FILE_MESSAGE),
        (Study.Failure.UNDECODABLE, pipeline.UNDECODABLE_MESSAGE),
        (Study.Failure.MISSING_FILE, "The stored image file is missing."),
        (Study.Failure.UNDECODABLE, "The pixel data could not be decoded."),
    ],
)
def test_a_failure_only_a_new_copy_mends_offers_no_button_and_is_not_queued(
    code, reason, client_for, doctor, failed_study
):
    study = failed_study(code, reason)
    client = client_for(doctor)
    assert BUTTON not in client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()

    assert analyse_again(client, study).status_code == 302
    assert Study.objects.values_list("status", "failure_code", "failure_reason").get(pk=study.pk) == (
        "failed", code, reason,
    )  # fmt: skip
    assert not AuditEvent.objects.filter(action="study.analysed_again").exists()


@pytest.mark.parametrize(
    "code, reason",
    [(Study.Failure.GAVE_UP, GAVE_UP), (Study.Failure.INFERENCE_ERROR, pipeline.INFERENCE_ERROR_MESSAGE)],
)
def test_a_failure_another_try_may_mend_is_offered(code, reason, client_for, doctor, failed_study):
    study = failed_study(code, reason)
    assert BUTTON in client_for(doctor).get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()


def test_the_hospital_admin_may_not_and_an_outsider_learns_nothing(client_for, hospital_admin, outsider, failed_study):
    study = failed_study()
    assert BUTTON not in client_for(hospital_admin).get(f"/studies/{study.code}/").content.decode()

    assert analyse_again(client_for(hospital_admin), study).status_code == 403
    assert analyse_again(client_for(outsider), study).status_code == 404
    assert Study.objects.values_list("status", flat=True).get(pk=study.pk) == "failed"
    assert not AuditEvent.objects.filter(action="study.analysed_again").exists()


def test_the_timeline_keeps_the_failure_and_who_asked_to_analyse_again(client_for, doctor, failed_study):
    """Once analysed again, the page read like a fresh upload: the failure and who asked
    for the new analysis were gone from it (portal review)."""
    import re
    from datetime import timedelta

    from hospital import audit

    study = failed_study()
    uploaded = timezone.now() - timedelta(minutes=10)
    Study.objects.filter(pk=study.pk).update(created_at=uploaded, queued_at=uploaded)
    study.refresh_from_db()
    audit.record(audit.Action.PREDICTION_FAILED, hospital=study.hospital, target=study, reason="gave_up")
    client = client_for(doctor)
    assert analyse_again(client, study).status_code == 302

    page = client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()

    timeline = page[page.index('id="timeline-heading"') :]
    steps = re.findall(r"</time><span>([^<]+?)(?: <span|</span>)", timeline)
    assert steps[:4] == ["Uploaded", "Analysis failed", "Analysed again", "Queued for analysis"]
    assert doctor.email in timeline
