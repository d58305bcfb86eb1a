"""The study admin: read-only, scoped to the hospital admin's hospital, no patient identifiers."""

from __future__ import annotations

import pytest

from diagnostics.models import Study
from diagnostics.services import ingest_upload
from hospital.models import Membership, Role
from tests.ingestion.conftest import CR_CHEST, TIBIA

LIST_URL = "/admin/diagnostics/study/"


@pytest.fixture
def studies(hospital_a, hospital_b) -> tuple[Study, Study]:
    own, _ = ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API,
                           patient_id="MRN-OWN-1", accession_number="ACC-OWN")  # fmt: skip
    other, _ = ingest_upload(hospital=hospital_b, data=TIBIA.read_bytes(), source=Study.Source.API,
                             accession_number="ACC-OTHER")  # fmt: skip
    return own, other


def test_hospital_admin_lists_only_their_hospitals_studies(client_for, hospital_admin, studies):
    own, other = studies
    response = client_for(hospital_admin).get(LIST_URL)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [own]
    assert str(other.code) not in response.content.decode()


def test_hospital_admin_sees_a_study_read_only_without_patient_identifiers(client_for, hospital_admin, studies):
    own, _ = studies
    response = client_for(hospital_admin).get(f"{LIST_URL}{own.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "ACC-OWN" in page
    assert "MRN-OWN-1" not in page
    assert response.context["has_change_permission"] is False
    posted = client_for(hospital_admin).post(f"{LIST_URL}{own.pk}/change/", {"status": "completed"})
    assert posted.status_code == 403
    own.refresh_from_db()
    assert own.status == Study.Status.QUEUED


def test_a_platform_operator_sees_a_study_without_its_accession_number(client_for, superuser, studies):
    """An operator of the platform reads every hospital's studies, and has no order to match."""
    own, other = studies
    for study, accession in ((own, "ACC-OWN"), (other, "ACC-OTHER")):
        response = client_for(superuser).get(f"{LIST_URL}{study.pk}/change/")
        assert response.status_code == 200
        page = response.content.decode()
        assert accession not in page
        assert str(study.code) in page


def test_a_platform_operator_who_administers_a_hospital_sees_its_accession_numbers_only(
    client_for, superuser, hospital_a, studies
):
    """Hiding accession numbers from the platform's view hid them from the operator's own
    hospital too, where they match a failure to its order as any of its admins does."""
    Membership.objects.create(user=superuser, hospital=hospital_a, role=Role.HOSPITAL_ADMIN)
    own, other = studies
    pages = [client_for(superuser).get(f"{LIST_URL}{study.pk}/change/").content.decode() for study in (own, other)]
    assert ("ACC-OWN" in pages[0], "ACC-OTHER" in pages[1]) == (True, False)


def test_another_hospitals_study_is_404_for_a_hospital_admin(client_for, hospital_admin, studies):
    _, other = studies
    assert client_for(hospital_admin).get(f"{LIST_URL}{other.pk}/change/").status_code == 404


def test_nobody_adds_or_deletes_studies_in_the_admin(client_for, superuser, studies):
    own, _ = studies
    client = client_for(superuser)
    assert client.get(f"{LIST_URL}add/").status_code == 403
    assert client.post(f"{LIST_URL}{own.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Study.objects.count() == 2
    response = client.get(LIST_URL)
    assert set(response.context["cl"].result_list) == set(studies)


def test_doctors_do_not_reach_the_study_admin(client_for, doctor, studies):
    response = client_for(doctor).get(LIST_URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_study_admin_searches_codes_not_accession_numbers(client_for, hospital_admin, studies):
    """Its search is a GET: an accession number typed there landed in URLs and browser
    history (PHI review). The portal's worklist searches it by POST."""
    own, _ = studies
    client = client_for(hospital_admin)
    assert list(client.get(LIST_URL, {"q": "ACC-OWN"}).context["cl"].result_list) == []
    assert list(client.get(LIST_URL, {"q": str(own.code)}).context["cl"].result_list) == [own]


def test_the_study_admin_lists_withdrawn_studies_and_says_who_withdrew_them_not_why(
    client_for, hospital_admin, doctor, studies
):
    """Withdrawn studies could be found nowhere but by their address (withdrawal review);
    the reason is free text that may name the patient, which the admin leaves out."""
    from diagnostics.withdrawal import withdraw_study

    own, _ = studies
    withdraw_study(own, reason="Film of MRN-OWN-1's brother", user=doctor)
    client = client_for(hospital_admin)

    withdrawn = client.get(LIST_URL, {"withdrawn_at__isempty": "0"})
    filed = client.get(LIST_URL, {"withdrawn_at__isempty": "1"})
    page = client.get(f"{LIST_URL}{own.pk}/change/").content.decode()

    assert (list(withdrawn.context["cl"].result_list), list(filed.context["cl"].result_list)) == ([own], [])
    assert doctor.email in page
    assert "brother" not in page
