"""Logins: lockout after repeated failures (even the right password is refused while
locked), every attempt audited without what was typed, idle sessions expire, and the
production settings pass Django's deployment checks."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.sessions.models import Session
from django.test import override_settings
from django.utils import timezone

from accounts.models import User
from hospital.models import AuditEvent, Membership
from tests.conftest import PASSWORD, REPO_ROOT

LOGIN_URL = "/accounts/login/"
WRONG = "not-the-password-at-all"


def _login(client, email: str, password: str, address: str = "198.51.100.7"):
    return client.post(LOGIN_URL, {"username": email, "password": password}, REMOTE_ADDR=address)


def _failures() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="auth.login_failed").order_by("id"))


@pytest.fixture
def threshold(settings) -> int:
    settings.LOGIN_LOCKOUT_THRESHOLD = 3
    settings.LOGIN_ACCOUNT_LOCKOUT_THRESHOLD = 7
    settings.LOGIN_LOCKOUT_SECONDS = 600
    return 3


def test_one_address_is_refused_after_the_threshold_even_with_the_right_password(client, doctor, threshold):
    for _ in range(threshold):
        assert _login(client, doctor.email, WRONG).status_code == 200

    response = _login(client, doctor.email, PASSWORD)

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    assert [e.detail for e in _failures()] == [{}, {}, {"locked": True}, {"locked": True}]
    assert {(e.target_id, e.outcome, e.hospital.slug) for e in _failures()} == {
        (str(doctor.code), "failure", "st-marys")
    }
    doctor.refresh_from_db()
    assert (doctor.failed_login_count, doctor.locked_until) == (threshold, None)  # the account is not locked


def test_each_guess_is_counted_before_its_password_is_checked(client, doctor, threshold, monkeypatch):
    """Counted after the check, guesses sent in parallel were all checked while the count
    still read below the threshold: about 20 per window, not 3 (concurrency review). The
    count each check sees includes its own guess, so at most `threshold` are ever checked."""
    from django.core.cache import cache

    from accounts import backends

    counts_seen = []
    real_check = User.check_password

    def check_password(user, raw):
        key = f"login-failures:{user.code}:{cache.get(backends._round_key(user), '')}:198.51.100.7"
        counts_seen.append(cache.get(key))
        return real_check(user, raw)

    monkeypatch.setattr(User, "check_password", check_password)
    for _ in range(threshold + 2):
        assert _login(client, doctor.email, WRONG).status_code == 200
    assert counts_seen == list(range(1, threshold + 1))


def test_guesses_from_one_address_do_not_lock_the_doctor_out_from_their_own(client, doctor, threshold):
    """One lock for the account: five wrong guesses from anywhere on the internet locked a
    doctor out of their own workstation for 15 minutes."""
    for _ in range(threshold + 2):
        _login(client, doctor.email, WRONG, address="203.0.113.66")

    response = _login(client, doctor.email, PASSWORD, address="10.20.0.15")

    assert response.status_code == 302
    doctor.refresh_from_db()
    assert (doctor.failed_login_count, doctor.locked_until) == (0, None)


def test_the_account_itself_locks_after_failures_from_many_addresses(client, doctor, threshold, settings):
    for n in range(settings.LOGIN_ACCOUNT_LOCKOUT_THRESHOLD):
        _login(client, doctor.email, WRONG, address=f"203.0.113.{n}")  # under the limit of each address
    doctor.refresh_from_db()
    assert doctor.locked_until is not None
    assert 590 <= (doctor.locked_until - timezone.now()).total_seconds() <= 600

    assert _login(client, doctor.email, PASSWORD, address="10.20.0.15").status_code == 200
    assert _failures()[-1].detail == {"locked": True}

    User.objects.filter(pk=doctor.pk).update(locked_until=timezone.now() - timedelta(seconds=1))  # it expires
    assert _login(client, doctor.email, PASSWORD, address="10.20.0.15").status_code == 302
    doctor.refresh_from_db()
    assert (doctor.failed_login_count, doctor.locked_until) == (0, None)


def test_an_admins_unlock_lets_the_locked_address_try_again_and_is_audited(client, doctor, threshold, superuser):
    from accounts import services

    for _ in range(threshold):
        _login(client, doctor.email, WRONG)
    assert _login(client, doctor.email, PASSWORD).status_code == 200

    # An address's lock is not on the account: it reported "0 unlocked" and left no trace.
    assert services.unlock_user(doctor, actor=superuser) is True

    assert _login(client, doctor.email, PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="user.changed", target_id=str(doctor.code)).count() == 1


def test_typos_before_a_successful_login_count_no_more(client, doctor, threshold):
    for _ in range(threshold - 1):
        _login(client, doctor.email, WRONG)
    assert _login(client, doctor.email, PASSWORD).status_code == 302
    client.post("/accounts/logout/")

    _login(client, doctor.email, WRONG)

    assert _login(client, doctor.email, PASSWORD).status_code == 302


def test_with_the_cache_down_the_account_locks_at_the_per_address_threshold(client, doctor, threshold):
    """Without the per-address counter only the account-wide lock (at 50) was left."""
    dead_cache = {"default": {"BACKEND": "config.cache.SharedClientRedisCache", "LOCATION": "redis://127.0.0.1:9/0"}}
    with override_settings(CACHES=dead_cache):
        for _ in range(threshold):
            _login(client, doctor.email, WRONG)
        refused = _login(client, doctor.email, PASSWORD)

    assert refused.status_code == 200
    doctor.refresh_from_db()
    assert doctor.locked_until is not None


def test_every_refused_login_costs_one_password_hash_so_timing_tells_nothing(client, doctor, threshold, monkeypatch):
    """A locked account answered at once while any other attempt hashed the password: after
    a few guesses, the answer's speed told which emails are accounts."""
    hashes = []
    # The test settings' hasher; its verify() hashes through encode() too, as PBKDF2's does.
    encode = MD5PasswordHasher.encode
    monkeypatch.setattr(MD5PasswordHasher, "encode", lambda self, *args: hashes.append(1) or encode(self, *args))

    def hashes_for(email: str, password: str = WRONG) -> int:
        hashes.clear()
        assert _login(client, email, password).status_code == 200
        return len(hashes)

    unknown = hashes_for("nobody@st-marys.example")
    wrong = hashes_for(doctor.email)
    for _ in range(threshold - 1):
        _login(client, doctor.email, WRONG)
    locked = hashes_for(doctor.email)
    locked_right_password = hashes_for(doctor.email, PASSWORD)

    assert (unknown, wrong, locked, locked_right_password) == (1, 1, 1, 1)
    assert _failures()[-1].detail == {"locked": True}


@pytest.mark.parametrize("dismissed", ["account", "membership"])
def test_a_dismissed_doctors_failed_logins_are_in_their_hospitals_trail(client, doctor, hospital_a, dismissed):
    """Filed under hospitals the account works in now, they went under none: the hospital
    that dismissed them never saw the tries."""
    if dismissed == "account":
        User.objects.filter(pk=doctor.pk).update(is_active=False)
    else:
        doctor.memberships.update(is_active=False)

    _login(client, doctor.email, WRONG)

    assert [(e.target_id, e.hospital_id) for e in _failures()] == [(str(doctor.code), hospital_a.pk)]


def test_failed_login_for_an_unknown_email_is_audited_without_what_was_typed(client, doctor):
    typed = "maybe-my-password@nowhere.example"
    assert _login(client, typed, WRONG).status_code == 200
    (event,) = _failures()
    assert (event.target_type, event.target_id, event.actor_user, event.hospital, event.detail) == (
        "",
        "",
        None,
        None,
        {},
    )
    assert typed not in str(AuditEvent.objects.values_list("detail", "target_id"))


def test_logout_is_audited(client, doctor):
    _login(client, doctor.email, PASSWORD)
    assert client.post("/accounts/logout/").status_code == 302
    (event,) = AuditEvent.objects.filter(action="auth.logout")
    assert (event.actor_user, event.target_id) == (doctor, str(doctor.code))


def test_a_session_is_in_the_trail_of_every_hospital_the_person_works_in(client, shared_radiologist):
    """Filed under the hospital it opened alone, the other's trail read its films opened in a
    session that never began, and the first got a login with no logout (admin review)."""
    _login(client, shared_radiologist.email, PASSWORD)
    opened = client.get("/").context["active_hospital"]
    assert client.post("/accounts/logout/").status_code == 302

    def here(slug: str) -> str:
        # Never which other hospital: that one's admins would learn who else employs them.
        return "this hospital" if opened.slug == slug else "another hospital"

    events = AuditEvent.objects.filter(action__in=["auth.login", "auth.logout"]).order_by("id")
    assert [(event.action, event.hospital.slug, event.actor_user, event.detail) for event in events] == [
        ("auth.login", "riverside", shared_radiologist, {"opened": here("riverside")}),
        ("auth.login", "st-marys", shared_radiologist, {"opened": here("st-marys")}),
        ("auth.logout", "riverside", shared_radiologist, {}),
        ("auth.logout", "st-marys", shared_radiologist, {}),
    ]


def test_inactive_user_cannot_log_in(client, doctor):
    User.objects.filter(pk=doctor.pk).update(is_active=False)
    assert _login(client, doctor.email, PASSWORD).status_code == 200
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("sign_in_page", [LOGIN_URL, "/admin/login/"])
def test_a_person_whose_every_membership_was_ended_cannot_sign_in_and_the_try_is_in_the_trail(
    client, hospital_admin, hospital_a, sign_in_page
):
    """Ending the membership is how an admin ends a person's access: signed in all the same,
    they landed on a 404 (admin review); then refused after the password was checked, the
    page said the password was right, nothing was recorded, and the admin let them in
    (diff review). Answered as a wrong password, counted, and filed where it was ended."""
    Membership.objects.filter(user=hospital_admin).update(is_active=False)

    right = client.post(sign_in_page, {"username": hospital_admin.email, "password": PASSWORD})
    wrong = client.post(sign_in_page, {"username": hospital_admin.email, "password": WRONG})

    assert (right.status_code, wrong.status_code) == (200, 200)
    assert "_auth_user_id" not in client.session
    assert right.context["form"].errors == wrong.context["form"].errors
    assert [(event.hospital, event.target_id) for event in _failures()] == [(hospital_a, str(hospital_admin.code))] * 2
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    hospital_admin.refresh_from_db()
    assert hospital_admin.failed_login_count == 2


def test_a_session_whose_last_membership_ends_ends_at_its_next_request_for_good(client, doctor):
    """Only treated as signed out, the session came back when the membership was restored,
    with no new sign-in (diff review)."""
    _login(client, doctor.email, PASSWORD)
    Membership.objects.filter(user=doctor).update(is_active=False)

    response = client.get("/")
    Membership.objects.filter(user=doctor).update(is_active=True)
    after_restoring = client.get("/")

    assert (response.status_code, response["Location"]) == (302, "/accounts/login/?next=/")
    assert (after_restoring.status_code, after_restoring["Location"]) == (302, "/accounts/login/?next=/")


def test_a_platform_operator_signing_in_at_the_portal_goes_to_the_admin(client, superuser):
    response = _login(client, superuser.email, PASSWORD)
    assert (response.status_code, response["Location"]) == (302, "/admin/")


def test_session_expires_after_the_idle_time_and_each_request_extends_it(client, doctor):
    assert (settings.SESSION_COOKIE_AGE, settings.SESSION_SAVE_EVERY_REQUEST) == (30 * 60, True)
    _login(client, doctor.email, PASSWORD)
    session = Session.objects.get(session_key=client.session.session_key)
    remaining = (session.expire_date - timezone.now()).total_seconds()
    assert 30 * 60 - 10 <= remaining <= 30 * 60

    # Idle past the limit: the session is gone, the next page asks to sign in again.
    Session.objects.filter(pk=session.pk).update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def _production_env(**extra: str) -> dict[str, str]:
    # DJANGO_* variables of this test process (e.g. the browser tests' async switch) are
    # not part of a production environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"} and not k.startswith("DJANGO_")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        ALLOWED_HOSTS="pleura.example",
        # Required, and never reached by these commands.
        DATABASE_URL="postgres://pleura@postgres.invalid:5432/pleura",
        REDIS_URL="redis://redis.invalid:6379/0",
        **extra,
    )
    return env


def test_production_settings_pass_check_deploy_without_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO_ROOT,
        env=_production_env(SECRET_KEY=secrets.token_urlsafe(50)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert "WARNING" not in result.stderr


def test_production_refuses_to_start_without_a_secret_key():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_ROOT,
        env=_production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "The environment variable SECRET_KEY is required." in result.stderr


def test_production_cookies_are_secure():
    code = (
        "from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.DEBUG)"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=REPO_ROOT,
        env=_production_env(SECRET_KEY=secrets.token_urlsafe(50)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "False"]


@pytest.mark.django_db
@pytest.mark.parametrize(("who", "lands_on"), [("hospital_admin", "/"), ("doctor", "/upload/")])
def test_signing_in_goes_on_to_next_only_where_the_role_may_go(request, client, who, lands_on):
    """A hospital admin sent on to the upload page landed on "Not allowed" (portal review)."""
    user = request.getfixturevalue(who)
    response = client.post(f"{LOGIN_URL}?next=/upload/", {"username": user.email, "password": PASSWORD})
    assert (response.status_code, response["Location"]) == (302, lands_on)
