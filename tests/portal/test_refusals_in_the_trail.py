"""Refused access is kept in the trail (`access.denied`), where the hospital concerned
reads it: another hospital's doctor or key trying study codes, a member trying what
their role may not, a revoked key still sending. None of it left a trace (audit review)."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from hospital import audit
from hospital.models import AuditEvent

REFUSED = "access.denied"


def refusals() -> list[tuple]:
    return [
        (e.hospital.slug if e.hospital else None, e.actor_user, e.actor_key, e.target_id, e.detail)
        for e in AuditEvent.objects.filter(action=REFUSED, outcome="denied").order_by("id")
    ]


@pytest.fixture
def study_a(make_study, hospital_a):
    return make_study(hospital_a, label="pneumonia", probability=0.8)


@pytest.mark.parametrize("page", ["study_detail", "study_image", "study_heatmap"])
def test_another_hospitals_doctor_gets_404_and_the_owner_sees_the_try(client_for, outsider, study_a, page):
    path = reverse(f"diagnostics:{page}", args=[study_a.code])

    assert client_for(outsider).get(path).status_code == 404

    assert refusals() == [("st-marys", outsider, None, str(study_a.code), {"path": path, "via": "portal"})]
    assert not AuditEvent.objects.filter(action__in=["study.viewed", "image.viewed"]).exists()


def test_a_study_code_that_exists_nowhere_is_a_plain_404(client_for, outsider, study_a):
    assert (
        client_for(outsider).get(reverse("diagnostics:study_detail", args=[study_a.hospital.code])).status_code == 404
    )
    assert refusals() == []


def test_a_review_refused_by_role_is_recorded_in_the_callers_hospital(client_for, doctor, study_a):
    path = reverse("diagnostics:study_review", args=[study_a.code])

    assert client_for(doctor).post(path, {"verdict": "agree"}).status_code == 403

    assert refusals() == [("st-marys", doctor, None, "", {"path": path})]


def test_another_hospitals_key_and_a_role_without_upload_are_recorded_by_the_api(
    key_b, hospital_admin, client_for, study_a
):
    detail = f"/api/v1/studies/{study_a.code}/"
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b[1]}")
    admin = APIClient()
    admin.force_login(hospital_admin)

    assert other.get(detail).status_code == 404
    assert admin.post("/api/v1/studies/", {}, format="multipart").status_code == 403

    assert refusals() == [
        ("st-marys", None, key_b[0], str(study_a.code), {"path": detail, "via": "api"}),
        ("st-marys", hospital_admin, None, "", {"path": "/api/v1/studies/"}),
    ]


def test_a_revoked_key_still_sending_is_recorded_once_a_minute(key_a):
    key, raw = key_a
    key.revoke()
    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert [emr.get("/api/v1/studies/").status_code for _ in range(3)] == [401, 401, 401]

    assert refusals() == [("st-marys", None, key, "", {"path": "/api/v1/studies/", "reason": "revoked key"})]


def test_a_key_that_never_existed_names_no_hospital_and_is_not_recorded(db):
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Bearer not-a-key-of-anyone")
    assert stranger.get("/api/v1/studies/").status_code == 401
    assert refusals() == []


def test_a_trail_that_cannot_be_written_still_refuses_with_403_not_500(client_for, doctor, study_a, monkeypatch):
    portal = client_for(doctor)

    def refuse(*args, **kwargs):
        raise DatabaseError("could not extend file")

    monkeypatch.setattr(audit, "record_all", refuse)
    response = portal.post(reverse("diagnostics:study_review", args=[study_a.code]), {"verdict": "agree"})

    assert response.status_code == 403
    assert refusals() == []


def test_the_worklists_poll_for_other_hospitals_studies_is_recorded_by_each_owner(
    client_for, outsider, study_a, make_study, hospital_a, hospital_b
):
    """The poll names several codes at once; a code of another hospital's study is as much
    a try as asking for its page."""
    second_a = make_study(hospital_a, label="normal", probability=0.1)
    own = make_study(hospital_b, label="normal", probability=0.1)
    path = reverse("diagnostics:worklist_updates")

    codes = [str(study_a.code), str(second_a.code), str(own.code)]
    assert client_for(outsider).get(path, {"s": codes}, HTTP_HX_REQUEST="true").status_code == 404

    expected = [
        ("st-marys", outsider, None, str(study.code), {"path": path, "via": "portal"}) for study in (study_a, second_a)
    ]
    assert sorted(refusals(), key=lambda refusal: refusal[3]) == sorted(expected, key=lambda refusal: refusal[3])


def test_the_polls_refusals_are_one_insert_however_many_codes_it_names(client_for, outsider, make_study, hospital_a):
    """Each foreign code cost a savepoint, an insert and a release: 75 queries for a
    worklist page of 25."""
    studies = [make_study(hospital_a, label="normal", probability=0.1) for _ in range(6)]
    path = reverse("diagnostics:worklist_updates")
    portal = client_for(outsider)

    def queries_for(codes) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert portal.get(path, {"s": codes}, HTTP_HX_REQUEST="true").status_code == 404
        return len(captured)

    one, six = queries_for([str(studies[0].code)]), queries_for([str(study.code) for study in studies])

    assert six == one
    assert len(refusals()) == 7


def test_another_hospitals_admin_page_for_a_hospital_is_recorded_in_that_hospitals_trail(
    client_for, outsider_admin, hospital_a
):
    path = f"/admin/hospital/hospital/{hospital_a.pk}/change/"

    assert client_for(outsider_admin).get(path).status_code == 404

    assert refusals() == [("st-marys", outsider_admin, None, str(hospital_a.code), {"path": path, "via": "admin"})]


@pytest.mark.parametrize("model", ["hospital/hospital", "diagnostics/study", "hospital/integrationkey"])
def test_an_admin_page_for_an_id_that_is_not_one_is_a_plain_404(client_for, outsider_admin, model):
    """Looking up "abc" as an id raised in the 404 handler itself: a 500 (diff review)."""
    portal = client_for(outsider_admin)
    portal.raise_request_exception = False

    assert portal.get(f"/admin/{model}/abc/change/").status_code == 404
    assert refusals() == []


def test_a_patient_id_put_in_a_refused_url_never_enters_the_append_only_trail(key_a, hospital_admin):
    """The trail kept `request.path` as it was, where the logs write it made safe: an ID put
    where a study's code belongs could never be taken out of it again (security review)."""
    key, raw = key_a
    key.revoke()
    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    admin = APIClient()
    admin.force_login(hospital_admin)

    assert emr.get("/api/v1/studies/MRN-77441-QUILLON/").status_code == 401
    assert admin.post("/dicomweb/studies/QUILLON-77441", b"", content_type="application/dicom").status_code == 403

    assert [detail["path"] for *_, detail in refusals()] == [
        "/api/v1/studies/<not a code>/",
        "/dicomweb/studies/<not a code>",
    ]
