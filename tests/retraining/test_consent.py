"""Training consent: off by default, changed by the hospital's own admin only, audited."""

from __future__ import annotations

from hospital.audit import Action
from hospital.models import AuditEvent, Hospital

URL = "/hospital/consent/"


def test_consent_is_off_by_default(hospital_a, hospital_b):
    assert Hospital.objects.filter(shares_reviews_for_training=True).count() == 0


def test_hospital_admin_turns_consent_on_and_off_with_an_audit_row_each(client_for, hospital_admin, hospital_a):
    client = client_for(hospital_admin)
    page = client.get(URL)
    assert page.status_code == 200
    assert b'data-testid="consent-state">off<' in page.content

    response = client.post(URL, {"shares_reviews_for_training": "on"})
    assert (response.status_code, response["Location"]) == (302, URL)
    hospital_a.refresh_from_db()
    assert hospital_a.shares_reviews_for_training is True

    client.post(URL, {})
    hospital_a.refresh_from_db()
    assert hospital_a.shares_reviews_for_training is False
    events = list(AuditEvent.objects.filter(action=Action.CONSENT_CHANGED).order_by("id"))
    assert [(e.actor_user, e.hospital, e.target_id, e.detail) for e in events] == [
        (hospital_admin, hospital_a, str(hospital_a.code), {"shares_reviews_for_training": True}),
        (hospital_admin, hospital_a, str(hospital_a.code), {"shares_reviews_for_training": False}),
    ]


def test_saving_the_same_choice_records_nothing(client_for, hospital_admin, hospital_a):
    client_for(hospital_admin).post(URL, {})
    assert AuditEvent.objects.filter(action=Action.CONSENT_CHANGED).count() == 0


def test_doctor_and_radiologist_get_403_and_nothing_changes(client_for, doctor, radiologist, hospital_a):
    for user in (doctor, radiologist):
        client = client_for(user)
        assert client.get(URL).status_code == 403
        assert client.post(URL, {"shares_reviews_for_training": "on"}).status_code == 403
    hospital_a.refresh_from_db()
    assert hospital_a.shares_reviews_for_training is False
    assert AuditEvent.objects.filter(action=Action.CONSENT_CHANGED).count() == 0


def test_other_hospitals_admin_changes_only_their_own_hospital(client_for, outsider_admin, hospital_a, hospital_b):
    client_for(outsider_admin).post(URL, {"shares_reviews_for_training": "on"})
    hospital_a.refresh_from_db()
    hospital_b.refresh_from_db()
    assert (hospital_a.shares_reviews_for_training, hospital_b.shares_reviews_for_training) == (False, True)
    assert list(AuditEvent.objects.filter(action=Action.CONSENT_CHANGED).values_list("hospital__slug", flat=True)) == [
        "riverside"
    ]


def test_the_consent_page_says_text_burned_into_the_image_leaves_with_it(client_for, hospital_admin):
    """It promised "no names, IDs, dates", and an image with a name printed on the film was
    exported as it was (learning-loop review)."""
    html = client_for(hospital_admin).get("/hospital/consent/").content.decode()
    assert "Text printed into the image itself (a name or ID burned into the film) is not removed" in html
