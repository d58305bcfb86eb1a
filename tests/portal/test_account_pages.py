from __future__ import annotations

from django.urls import reverse

from hospital.audit import Action
from hospital.models import AuditEvent
from tests.conftest import PASSWORD

LOGIN = reverse("accounts:login")


def test_login_page_has_labelled_fields_and_no_nav(client):
    html = client.get(LOGIN).content.decode()
    assert '<label for="id_username">Email address</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert f'action="{LOGIN}"' in html
    assert 'class="mainnav"' not in html
    assert "<title>Sign in · Pleura</title>" in html


def test_doctor_signs_in_and_lands_on_the_worklist(client, doctor):
    response = client.post(LOGIN, {"username": doctor.email, "password": PASSWORD})
    assert (response.status_code, response["Location"]) == (302, reverse("diagnostics:worklist"))
    html = client.get(response["Location"]).content.decode()
    assert 'class="hospital-chip"' in html and "St Mary&#x27;s Hospital" in html
    assert "doctor@stmarys.example" in html


def test_wrong_password_shows_a_clear_error(client, doctor):
    response = client.post(LOGIN, {"username": doctor.email, "password": "wrong-password-123"})
    assert response.status_code == 200
    assert "Please enter a correct email address and password." in response.content.decode()


def test_the_right_password_refused_by_the_lockout_is_not_called_wrong_alone(client, doctor, settings):
    """A doctor who typed the right password after a few wrong ones was told it was wrong,
    and tried resets (fresh-machine review); the words are the same with or without a
    lockout, so they tell an attacker nothing."""
    settings.LOGIN_LOCKOUT_SECONDS = 900
    for _ in range(settings.LOGIN_LOCKOUT_THRESHOLD + 1):
        client.post(LOGIN, {"username": doctor.email, "password": "wrong-password-123"})

    response = client.post(LOGIN, {"username": doctor.email, "password": PASSWORD})

    assert response.status_code == 200
    assert (
        "Please enter a correct email address and password. After several failed attempts, signing in is blocked "
        "for up to 15 minutes, even with the right password: wait, or ask your hospital&#x27;s admin."
    ) in response.content.decode()


def test_logout_is_a_post_form_and_ends_the_session(client_for, doctor):
    client = client_for(doctor)
    html = client.get(reverse("diagnostics:worklist")).content.decode()
    assert f'<form method="post" action="{reverse("accounts:logout")}"' in html
    response = client.post(reverse("accounts:logout"))
    assert (response.status_code, response["Location"]) == (302, LOGIN)
    assert client.get(reverse("diagnostics:worklist")).status_code == 302


def test_password_change_page_and_change(client_for, doctor):
    client = client_for(doctor)
    page = client.get(reverse("accounts:password_change"))
    assert page.status_code == 200
    assert '<label for="id_old_password">Old password</label>' in page.content.decode()
    new = "a-much-longer-passphrase-42"
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    doctor.refresh_from_db()
    assert doctor.check_password(new)
    assert "Your password has been changed." in client.get(response["Location"]).content.decode()
    assert AuditEvent.objects.filter(action=Action.PASSWORD_CHANGED, actor_user=doctor).count() == 1


def test_password_change_errors_are_shown_next_to_the_field(client_for, doctor):
    response = client_for(doctor).post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": "short", "new_password2": "short"},
    )
    assert response.status_code == 200
    assert '<p class="field-error">This password is too short. It must contain at least 12 characters.</p>' in (
        response.content.decode()
    )


def test_switcher_lists_only_the_users_hospitals(client_for, shared_radiologist, hospital_a, hospital_b):
    html = client_for(shared_radiologist).get(reverse("diagnostics:worklist")).content.decode()
    switcher = html[html.index('<select id="hospital-switch"') : html.index("</select>", html.index("hospital-switch"))]
    assert switcher.count("<option ") == 2
    assert f'<option value="{hospital_a.code}"' in switcher and f'<option value="{hospital_b.code}"' in switcher


def test_switching_to_a_hospital_one_does_not_belong_to_is_404(client_for, doctor, hospital_b):
    client = client_for(doctor)
    response = client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_b.code)})
    assert response.status_code == 404
    assert "Riverside Clinic" not in client.get(reverse("diagnostics:worklist")).content.decode()


def _sign_in(client, user):
    response = client.post(reverse("accounts:login"), {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302
    return response


def test_signing_in_again_opens_the_hospital_this_browser_last_worked_in(shared_radiologist, hospital_a, hospital_b):
    """The session ended (idle), and signing in again opened the first hospital by name: the
    review kept open for the other was refused as "switched in another tab" (portal review)."""
    from django.test import Client

    from accounts.views import LAST_HOSPITAL_COOKIE
    from hospital.models import AuditEvent
    from hospital.tenancy import active_memberships

    first = active_memberships(shared_radiologist).first().hospital
    other = hospital_b if first == hospital_a else hospital_a
    browser = Client()
    _sign_in(browser, shared_radiologist)
    browser.post(reverse("accounts:switch_hospital"), {"hospital": str(other.code)})
    remembered = browser.cookies[LAST_HOSPITAL_COOKIE]
    assert (remembered.value, remembered["httponly"], remembered["samesite"]) == (str(other.code), True, "Lax")

    # The session is gone; the browser keeps its cookies.
    after_the_time_out = Client()
    after_the_time_out.cookies[LAST_HOSPITAL_COOKIE] = remembered.value
    _sign_in(after_the_time_out, shared_radiologist)

    assert after_the_time_out.get(reverse("diagnostics:worklist")).context["active_hospital"] == other
    last_login = AuditEvent.objects.filter(action="auth.login").order_by("-pk")[:2]
    assert {(event.hospital, event.detail["opened"]) for event in last_login} == {
        (hospital, "this hospital" if hospital == other else "another hospital")
        for hospital in (hospital_a, hospital_b)
    }


def test_a_remembered_hospital_the_person_does_not_work_in_is_ignored(doctor, hospital_a, hospital_b):
    from django.test import Client

    from accounts.views import LAST_HOSPITAL_COOKIE

    browser = Client()
    browser.cookies[LAST_HOSPITAL_COOKIE] = str(hospital_b.code)  # another person's, on a shared workstation
    _sign_in(browser, doctor)

    assert browser.get(reverse("diagnostics:worklist")).context["active_hospital"] == hospital_a
    assert browser.cookies[LAST_HOSPITAL_COOKIE].value == str(hospital_a.code)
