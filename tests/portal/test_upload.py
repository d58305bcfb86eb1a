from __future__ import annotations

import re

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from diagnostics.models import Study
from hospital.audit import Action
from hospital.models import AuditEvent
from tests.conftest import SHARED_DATA
from tests.portal.conftest import NORMAL_JPEG, PNEUMONIA_JPEG

UPLOAD = reverse("diagnostics:upload")
HX = {"HTTP_HX_REQUEST": "true"}
CR_DICOM = SHARED_DATA / "dicom" / "CR-MONO1-10-chest.dcm"


def jpeg(path=PNEUMONIA_JPEG, name="chest.jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, path.read_bytes(), content_type="image/jpeg")


def test_upload_page_has_a_drop_zone_a_multi_file_picker_and_optional_ids(client_for, doctor):
    response = client_for(doctor).get(UPLOAD)
    html = response.content.decode()
    assert response.status_code == 200
    assert f'action="{UPLOAD}"' in html and 'enctype="multipart/form-data"' in html
    assert re.search(r'<input id="upload-files"[^>]*type="file" name="files" multiple', html)
    assert '<label for="id_patient_id">Patient ID (optional)</label>' in html
    assert '<label for="id_accession_number">Accession number (optional)</label>' in html
    assert "Drag and drop radiographs here" in html
    assert "<title>Upload · Pleura</title>" in html


def test_one_file_per_htmx_request_returns_its_inline_result_and_queues_it(client_for, doctor, hospital_a):
    response = client_for(doctor).post(
        UPLOAD, {"files": jpeg(), "patient_id": "MRN-77", "accession_number": "ACC-77"}, **HX
    )
    html = response.content.decode()
    assert response.status_code == 201
    assert html.lstrip().startswith('<div class="upload-result upload-result--ok" data-status="201">')
    study = Study.objects.get()
    assert (study.hospital, study.status, study.source, study.uploaded_by) == (hospital_a, "queued", "portal", doctor)
    assert (study.patient_id, study.accession_number) == ("MRN-77", "ACC-77")
    assert f'href="{reverse("diagnostics:study_detail", args=[study.code])}"' in html
    assert "queued for analysis · filed under patient ID MRN-77 · accession ACC-77" in html
    worklist = client_for(doctor).get(reverse("diagnostics:worklist")).content.decode()
    assert f'<tr id="study-{study.code}" class="worklist__row worklist__row--queued"' in worklist


def test_a_real_dicom_radiograph_is_accepted(client_for, doctor):
    upload = SimpleUploadedFile("chest.dcm", CR_DICOM.read_bytes(), content_type="application/dicom")
    response = client_for(doctor).post(UPLOAD, {"files": upload, "patient_id": "MRN-5"}, **HX)
    assert response.status_code == 201
    assert Study.objects.get().original_format == "dcm"
    # The answer names whose film it was filed under: the header's name, the ID typed.
    assert (
        "queued for analysis · filed under Anonymized, patient ID MRN-5 · accession FUJI95714."
        in response.content.decode()
    )


def test_a_file_that_is_not_an_image_gets_a_clear_inline_error_and_nothing_is_stored(client_for, doctor):
    fake = SimpleUploadedFile("report.pdf", b"%PDF-1.4 not a radiograph", content_type="application/pdf")
    response = client_for(doctor).post(UPLOAD, {"files": fake}, **HX)
    html = response.content.decode()
    assert 400 <= response.status_code < 500
    assert 'class="upload-result upload-result--error"' in html
    assert "Not accepted.</strong>" in html and "PDF" in html
    assert Study.objects.count() == 0
    assert AuditEvent.objects.filter(action=Action.STUDY_UPLOAD_REJECTED).count() == 1


def test_a_second_upload_of_the_same_dicom_is_reported_as_already_received(client_for, doctor):
    client = client_for(doctor)
    data = CR_DICOM.read_bytes()
    client.post(UPLOAD, {"files": SimpleUploadedFile("a.dcm", data)}, **HX)
    again = client.post(UPLOAD, {"files": SimpleUploadedFile("b.dcm", data)}, **HX)
    assert again.status_code == 200
    assert "Already received" in again.content.decode()
    assert Study.objects.count() == 1


def test_a_withdrawn_instance_uploaded_again_is_said_to_be_withdrawn_and_how_to_file_it(client_for, doctor):
    """ "Already received" linked the withdrawn study with no word that it was (withdrawal review)."""
    from diagnostics.withdrawal import withdraw_study

    client = client_for(doctor)
    data = CR_DICOM.read_bytes()
    client.post(UPLOAD, {"files": SimpleUploadedFile("a.dcm", data)}, **HX)
    withdraw_study(Study.objects.get(), reason="A duplicate", user=doctor)

    again = client.post(UPLOAD, {"files": SimpleUploadedFile("b.dcm", data)}, **HX).content.decode()

    assert "<strong>Already received, and withdrawn</strong> as filed in error" in again
    assert "Open the withdrawn study</a>" in again
    assert Study.objects.count() == 1


def test_without_javascript_several_files_post_at_once_and_each_gets_a_result(client_for, doctor):
    files = [jpeg(PNEUMONIA_JPEG, "one.jpeg"), jpeg(NORMAL_JPEG, "two.jpeg"), SimpleUploadedFile("x.txt", b"hello")]
    response = client_for(doctor).post(UPLOAD, {"files": files, "patient_id": "MRN-9"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert html.count('class="upload-item"') == 3
    assert html.count("upload-result--ok") == 2 and html.count("upload-result--error") == 1
    assert Study.objects.filter(patient_id="MRN-9").count() == 2


def test_posting_no_file_is_a_400_with_a_message(client_for, doctor):
    full = client_for(doctor).post(UPLOAD, {"patient_id": "MRN-1"})
    assert full.status_code == 400
    assert "Choose at least one file to upload." in full.content.decode()
    partial = client_for(doctor).post(UPLOAD, {}, **HX)
    assert partial.status_code == 400
    assert partial.content.decode().lstrip().startswith('<div class="notice notice--error" role="alert">')


def test_an_htmx_request_with_several_files_is_refused_in_words_before_any_is_stored(client_for, doctor):
    """Every file was stored, then answered with an empty 400: a client sending them again
    stored PNG and JPEG studies twice (they have no instance UID to recognise)."""
    files = [jpeg(PNEUMONIA_JPEG, "one.jpeg"), jpeg(NORMAL_JPEG, "two.jpeg")]
    response = client_for(doctor).post(UPLOAD, {"files": files}, **HX)
    assert response.status_code == 400
    assert "Send one file per request: this page uploads each file on its own." in response.content.decode()
    assert Study.objects.count() == 0


def test_an_identifier_with_control_characters_is_refused(client_for, doctor):
    response = client_for(doctor).post(UPLOAD, {"files": jpeg(), "patient_id": "MRN\x07"}, **HX)
    assert response.status_code == 400
    assert "upload-result--error" in response.content.decode()
    assert Study.objects.count() == 0


def test_uploads_always_land_in_the_uploaders_active_hospital(client_for, outsider, hospital_b):
    response = client_for(outsider).post(UPLOAD, {"files": jpeg()}, **HX)
    assert response.status_code == 201
    assert Study.objects.get().hospital == hospital_b


def test_anonymous_upload_is_sent_to_sign_in_and_stores_nothing(client, db):
    page = client.post(UPLOAD, {"files": jpeg()})
    script = client.post(UPLOAD, {"files": jpeg()}, **HX)  # the page's script, after the session ended

    assert (page.status_code, page["Location"]) == (302, "/accounts/login/?next=/upload/")
    assert (script.status_code, script["HX-Redirect"]) == (401, "/accounts/login/?next=/")
    assert Study.objects.count() == 0


def test_a_hospital_admin_uploads_nothing_and_is_not_offered_to(client_for, hospital_admin):
    """As in the API: hospital admins run accounts, not clinical studies."""
    client = client_for(hospital_admin)

    assert client.get(UPLOAD).status_code == 403
    assert client.post(UPLOAD, {"files": jpeg(), "patient_id": "MRN-1"}, **HX).status_code == 403
    assert Study.objects.count() == 0
    worklist = client.get(reverse("diagnostics:worklist")).content.decode()
    assert 'href="/upload/"' not in worklist


def test_a_file_over_the_limit_is_refused_in_words_and_audited(client_for, doctor, hospital_a, settings):
    """The REST API recorded its refusals, the portal did not record this one (audit review)."""
    settings.MAX_UPLOAD_BYTES = 1024 * 1024
    big = SimpleUploadedFile("big.jpeg", b"\xff\xd8" + b"\0" * (1024 * 1024), content_type="image/jpeg")

    response = client_for(doctor).post(UPLOAD, {"files": big}, **HX)

    assert response.status_code == 413
    assert "The file is larger than the 1 MB limit." in response.content.decode()
    event = AuditEvent.objects.get(action=Action.STUDY_UPLOAD_REJECTED)
    assert (event.actor_user, event.hospital, event.outcome) == (doctor, hospital_a, "failure")
    reason = "The file is larger than the 1 MB limit."
    assert event.detail == {"source": "portal", "status_code": 413, "reason": reason, "size": 1024 * 1024 + 2}
    assert Study.objects.count() == 0
