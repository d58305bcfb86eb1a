from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from diagnostics.imaging import load_grayscale
from diagnostics.models import Review, Study
from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore.models import ModelVersion
from tests.portal.conftest import add_prediction


def url(name: str, study: Study) -> str:
    return reverse(f"diagnostics:{name}", args=[study.code])


@pytest.fixture
def study(make_study, hospital_a):
    return make_study(
        hospital_a,
        label="pneumonia",
        probability=0.873,
        warnings=["not_chest"],
        modality="CR",
        body_part="CHEST",
        patient_id="MRN-4711",
        patient_name="Doe^Jane",
        accession_number="ACC-9001",
    )


def test_study_view_shows_the_result_in_words_against_the_threshold(client_for, doctor, study):
    response = client_for(doctor).get(url("study_detail", study))
    html = response.content.decode()
    assert response.status_code == 200
    assert "Pneumonia likely" in html
    assert (
        "Probability of pneumonia <strong>87.3%</strong>, at or above the model's decision threshold of 42.0%"
    ) in html
    assert 'style="width: 87.3%"' in html and 'style="left: 42.0%"' in html
    assert "pleura-resnet18-test" in html
    assert "The body part examined is not the chest: the model is validated on chest radiographs only." in html
    assert f'src="{url("study_image", study)}"' in html
    assert f'src="{url("study_heatmap", study)}"' in html
    assert 'id="heatmap-toggle"' in html and "data-heatmap-opacity" in html
    assert "<dt>Modality</dt><dd>CR</dd>" in html
    assert "Predicted" in html and "Uploaded" in html  # timeline
    # No identifier in the title: browser history and synced tabs keep titles (PHI review).
    received = timezone.localtime(study.created_at).strftime("%-d %b %Y %H:%M")
    assert f"<title>Study received {received} · Pleura</title>" in html
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]


def test_a_normal_result_reads_as_no_pneumonia(client_for, doctor, make_study, hospital_a):
    normal = make_study(hospital_a, label="normal", probability=0.12)
    html = client_for(doctor).get(url("study_detail", normal)).content.decode()
    assert "No pneumonia detected" in html
    assert "<strong>12.0%</strong>, below the model's decision threshold of 42.0%" in html


def test_the_heatmap_legend_says_it_marks_evidence_for_pneumonia_and_may_be_blank_for_a_normal_result(
    client_for, doctor, study, make_study, hospital_a
):
    """Grad-CAM of the pneumonia logit: a normal result's map is mostly blank (182 of 220
    normal validation results in the reviewer's probe), while the legend said it marked
    'the regions that weighed most in the model's result'."""
    normal = make_study(hospital_a, label="normal", probability=0.12)
    grid = study.predictions.get().model_version.image_size // 32
    coarse = f"It is coarse: the model's last layer sees the image as {grid} x {grid} regions."

    pneumonia_page = client_for(doctor).get(url("study_detail", study)).content.decode()
    normal_page = client_for(doctor).get(url("study_detail", normal)).content.decode()

    assert f"warmer colours mark regions that pointed the model toward pneumonia. {coarse}" in pneumonia_page
    assert (
        "warmer colours mark regions that pointed the model toward pneumonia; for a result of no pneumonia "
        f"there are often none, and the map is blank. {coarse}"
    ) in normal_page
    assert "weighed most" not in pneumonia_page + normal_page


def test_viewing_is_audited_without_phi(client_for, doctor, study):
    client_for(doctor).get(url("study_detail", study))
    event = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (event.actor_user, event.hospital, event.target_type, event.target_id) == (
        doctor,
        study.hospital,
        "study",
        str(study.code),
    )
    assert event.detail == {}


def test_shadow_predictions_are_never_shown(client_for, doctor, study):
    shadow = ModelVersion.objects.create(
        name="shadow-candidate-v2",
        architecture="resnet18-gray",
        image_size=224,
        weights_path="s.pt",
        weights_sha256="1" * 64,
        threshold=0.5,
        shadow=True,
    )
    add_prediction(study, shadow, label="normal", probability=0.02, is_shadow=True)
    html = client_for(doctor).get(url("study_detail", study)).content.decode()
    assert "shadow-candidate-v2" not in html
    assert "Pneumonia likely" in html and "87.3%" in html


def test_pending_study_polls_its_status_until_done(client_for, doctor, make_study, hospital_a):
    pending = make_study(hospital_a, status=Study.Status.PROCESSING)
    client = client_for(doctor)
    html = client.get(url("study_detail", pending)).content.decode()
    assert f'hx-get="{url("study_status", pending)}" hx-trigger="every 3s"' in html
    assert "Awaiting analysis" in html
    assert 'id="heatmap-toggle"' not in html
    partial = client.get(url("study_status", pending), HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    assert partial.content.decode().lstrip().startswith('<div id="study-status"')
    assert "HX-Refresh" not in partial
    Study.objects.filter(pk=pending.pk).update(status=Study.Status.COMPLETED)
    done = client.get(url("study_status", pending), HTTP_HX_REQUEST="true")
    assert done["HX-Refresh"] == "true"
    assert "every 3s" not in done.content.decode()
    full = client.get(url("study_status", pending))
    assert (full.status_code, full["Location"]) == (302, url("study_detail", pending))


def test_failed_study_explains_why(client_for, doctor, make_study, hospital_a):
    failed = make_study(hospital_a, status=Study.Status.FAILED, failure_reason="The pixel data could not be decoded.")
    html = client_for(doctor).get(url("study_detail", failed)).content.decode()
    assert "No result" in html
    assert "The pixel data could not be decoded." in html


def test_image_and_heatmap_are_served_privately_to_members(client_for, radiologist, study):
    client = client_for(radiologist)
    image = client.get(url("study_image", study))
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"
    assert image["Cache-Control"] == "private, no-store"
    body = b"".join(image.streaming_content)
    assert Image.open(io.BytesIO(body)).size == (study.columns, study.rows)
    # Drawn by this first request from the stored original, with the upload's decoder.
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), load_grayscale(study))
    heatmap = client.get(url("study_heatmap", study))
    overlay = Image.open(io.BytesIO(b"".join(heatmap.streaming_content)))
    assert (overlay.mode, overlay.size) == ("RGBA", (study.columns, study.rows))
    viewed = AuditEvent.objects.filter(action=Action.IMAGE_VIEWED, target_id=str(study.code)).order_by("pk")
    assert [event.detail["image"] for event in viewed] == ["display", "heatmap"]


def test_heatmap_of_a_study_without_prediction_is_404(client_for, doctor, make_study, hospital_a):
    pending = make_study(hospital_a, status=Study.Status.QUEUED)
    assert client_for(doctor).get(url("study_heatmap", pending)).status_code == 404


@pytest.mark.parametrize("name", ["study_detail", "study_status", "study_image", "study_heatmap"])
@pytest.mark.parametrize("hx", [False, True])
def test_outsiders_get_404_on_every_study_page_and_partial(client_for, outsider, study, name, hx):
    headers = {"HTTP_HX_REQUEST": "true"} if hx else {}
    response = client_for(outsider).get(url(name, study), **headers)
    assert response.status_code == 404
    assert "Doe^Jane" not in response.content.decode() and "MRN-4711" not in response.content.decode()
    assert not AuditEvent.objects.filter(action__in=[Action.STUDY_VIEWED, Action.IMAGE_VIEWED]).exists()


def test_outsider_404_page_is_friendly(client_for, outsider, study):
    html = client_for(outsider).get(url("study_detail", study)).content.decode()
    assert "There is nothing here, or it belongs to another hospital." in html


def test_shared_radiologist_sees_the_study_only_with_its_hospital_active(client_for, shared_radiologist, study):
    client = client_for(shared_radiologist)
    client.post(reverse("accounts:switch_hospital"), {"hospital": str(study.hospital.code)})
    assert client.get(url("study_detail", study)).status_code == 200
    other = shared_radiologist.memberships.exclude(hospital=study.hospital).get().hospital
    client.post(reverse("accounts:switch_hospital"), {"hospital": str(other.code)})
    assert client.get(url("study_detail", study)).status_code == 404


def test_doctor_sees_reviews_but_no_review_form(client_for, doctor, radiologist, study):
    Review.objects.create(
        study=study,
        radiologist=radiologist,
        verdict="agree",
        correct_label="pneumonia",
        note="Clear RLL consolidation.",
    )
    html = client_for(doctor).get(url("study_detail", study)).content.decode()
    assert "Clear RLL consolidation." in html and "radiologist@stmarys.example" in html
    assert url("study_review", study) not in html
    assert "Reviews are recorded by radiologists." in html


def test_radiologist_sees_the_review_form(client_for, radiologist, study):
    html = client_for(radiologist).get(url("study_detail", study)).content.decode()
    assert f'hx-post="{url("study_review", study)}"' in html
    assert f'action="{url("study_review", study)}"' in html
    assert "Do you agree with the model's finding (pneumonia)?" in html


def test_dicom_person_names_read_naturally(client_for, doctor, study):
    html = client_for(doctor).get(url("study_detail", study)).content.decode()
    assert "<h1>Doe, Jane</h1>" in html
    worklist = client_for(doctor).get(reverse("diagnostics:worklist")).content.decode()
    assert '<div class="muted small">Doe, Jane</div>' in worklist


@pytest.mark.parametrize("role", ["doctor", "radiologist", "hospital_admin"])
def test_every_role_of_the_hospital_can_read_every_page(client_for, request, study, role):
    client = client_for(request.getfixturevalue(role))
    for path in (reverse("diagnostics:worklist"), url("study_detail", study)):
        assert client.get(path).status_code == 200
    # Uploading is clinical work, as in the API (tests/portal/test_upload.py).
    assert client.get(reverse("diagnostics:upload")).status_code == (403 if role == "hospital_admin" else 200)
    assert client.get(url("study_image", study)).status_code == 200


def test_a_study_waiting_longer_than_the_sweeper_waits_says_so(client_for, doctor, make_study, hospital_a, settings):
    """Queued for hours through an outage, it read "Waiting for analysis" like one queued a
    second ago, and the upload page promises seconds (portal review)."""
    from datetime import timedelta

    from django.utils import timezone

    settings.PIPELINE_STUCK_SECONDS = 300
    waiting = make_study(hospital_a, status=Study.Status.QUEUED)
    just_now = make_study(hospital_a, status=Study.Status.QUEUED)
    Study.objects.filter(pk=waiting.pk).update(queued_at=timezone.now() - timedelta(minutes=6))
    Study.objects.filter(pk=just_now.pk).update(queued_at=timezone.now() - timedelta(minutes=4))
    client = client_for(doctor)

    def page(study):
        return client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()

    assert "Waiting longer than usual, since " in page(waiting)
    assert "the analysis service is busy or stopped. The image is kept" in page(waiting)
    assert "Waiting longer than usual" not in page(just_now)
    assert "Waiting for analysis; this page updates by itself." in page(just_now)
    worklist = client.get(reverse("diagnostics:worklist")).content.decode()
    assert worklist.count('<div class="small warning-text">waiting since ') == 1
