"""The account pages: switching the active hospital (only to one of your own), and the
password change page (signed-in users only, audited)."""

from __future__ import annotations

import pytest

from hospital.models import AuditEvent
from hospital.tenancy import SESSION_KEY
from tests.conftest import PASSWORD

SWITCH_URL = "/accounts/hospital/"


def _switch(client, hospital, next_url: str = "/"):
    return client.post(SWITCH_URL, {"hospital": str(hospital.code), "next": next_url})


def test_shared_radiologist_switches_between_their_hospitals(client_for, shared_radiologist, hospital_a, hospital_b):
    client = client_for(shared_radiologist)
    for hospital in (hospital_b, hospital_a):
        response = _switch(client, hospital)
        assert response.status_code == 302
        assert response["Location"] == "/"
        assert client.session[SESSION_KEY] == str(hospital.code)
        assert client.get("/").context["active_hospital"] == hospital
    events = AuditEvent.objects.filter(action="auth.hospital_switched").order_by("id")
    assert [(e.actor_user, e.hospital, e.target_id) for e in events] == [
        (shared_radiologist, hospital_b, str(hospital_b.code)),
        (shared_radiologist, hospital_a, str(hospital_a.code)),
    ]


def test_outsider_cannot_switch_to_a_hospital_they_do_not_belong_to(client_for, outsider, hospital_a, hospital_b):
    client = client_for(outsider)
    response = _switch(client, hospital_a)
    assert response.status_code == 404
    assert SESSION_KEY not in client.session
    assert client.get("/").context["active_hospital"] == hospital_b
    assert not AuditEvent.objects.filter(action="auth.hospital_switched").exists()


def test_switching_to_a_deactivated_membership_is_refused(client_for, shared_radiologist, hospital_b):
    shared_radiologist.memberships.filter(hospital=hospital_b).update(is_active=False)
    client = client_for(shared_radiologist)
    assert _switch(client, hospital_b).status_code == 404
    assert SESSION_KEY not in client.session


def test_switch_ignores_an_offsite_next_url(client_for, shared_radiologist, hospital_b):
    response = _switch(client_for(shared_radiologist), hospital_b, next_url="https://evil.example/")
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_switch_needs_a_post_and_a_signed_in_user(client, client_for, doctor, hospital_a):
    assert client.post(SWITCH_URL, {"hospital": str(hospital_a.code)}).status_code == 302
    assert SESSION_KEY not in client.session
    assert client_for(doctor).get(SWITCH_URL).status_code == 405


def test_switch_with_garbage_is_a_404(client_for, doctor):
    assert client_for(doctor).post(SWITCH_URL, {"hospital": "not-a-uuid"}).status_code == 404


def test_password_change_is_audited_and_needs_the_old_password(client, doctor):
    client.login(username=doctor.email, password=PASSWORD)
    new = "an-entirely-new-passphrase-7"
    response = client.post(
        "/accounts/password/", {"old_password": "wrong-old-password", "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 200
    doctor.refresh_from_db()
    assert doctor.check_password(PASSWORD)
    response = client.post(
        "/accounts/password/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    doctor.refresh_from_db()
    assert doctor.check_password(new)
    (event,) = AuditEvent.objects.filter(action="auth.password_changed")
    assert (event.actor_user, event.target_id, event.detail) == (doctor, str(doctor.code), {})


def test_password_change_page_sends_anonymous_visitors_to_login(client):
    response = client.get("/accounts/password/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/accounts/password/"


def test_the_admins_password_page_leads_to_the_audited_one_and_changes_nothing_itself(client_for, hospital_admin):
    client = client_for(hospital_admin)
    new = "an-entirely-new-passphrase-7"

    page = client.get("/admin/password_change/")
    posted = client.post(
        "/admin/password_change/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )

    assert [(r.status_code, r["Location"]) for r in (page, posted)] == [(302, "/accounts/password/")] * 2
    hospital_admin.refresh_from_db()
    assert hospital_admin.check_password(PASSWORD)
    assert 'href="/admin/password_change/"' in client.get("/admin/").content.decode()  # the link admins follow


@pytest.mark.parametrize("user_fixture", ["hospital_admin", "superuser"])
def test_ones_own_password_cannot_be_set_in_the_admin_without_the_current_one(request, client_for, user_fixture):
    """The admin's user page sets a password with no current one: anyone at an open admin
    session could take the account over. One's own goes to the portal's page."""
    user = request.getfixturevalue(user_fixture)
    client = client_for(user)
    new = "an-entirely-new-passphrase-7"
    answers = []
    for spelling in (f"{user.pk}", f"0{user.pk}"):  # "01" is the same account to the admin
        own = f"/admin/accounts/user/{spelling}/password/"
        answers += [client.get(own), client.post(own, {"password1": new, "password2": new})]

    assert [(r.status_code, r["Location"]) for r in answers] == [(302, "/accounts/password/")] * 4
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert not AuditEvent.objects.filter(action="auth.password_changed").exists()
