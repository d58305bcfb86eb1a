"""Whose address the trail and the login lock see. nginx in front of gunicorn names the
caller in X-Real-IP; taken from any peer, the header let a caller choose its address,
a new one for each password guess (PHI and security review)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import RequestFactory

from hospital.audit import client_ip
from hospital.models import AuditEvent
from tests.conftest import PASSWORD, REPO_ROOT

LOGIN_URL = "/accounts/login/"


def request_from(peer: str, real_ip: str | None = None):
    headers = {"HTTP_X_REAL_IP": real_ip} if real_ip is not None else {}
    return RequestFactory().get("/", REMOTE_ADDR=peer, **headers)


@pytest.mark.parametrize(
    ("trusted", "peer", "real_ip", "seen"),
    [
        (["127.0.0.1", "::1"], "127.0.0.1", "203.0.113.9", "203.0.113.9"),  # the pod's own nginx
        (["127.0.0.1", "::1"], "::1", "2001:db8::9", "2001:db8::9"),
        (["127.0.0.1", "::1"], "10.4.0.12", "203.0.113.9", "10.4.0.12"),  # another pod, straight to gunicorn
        (["10.4.0.0/16"], "10.4.0.12", "203.0.113.9", "203.0.113.9"),
        (["*"], "172.18.0.5", "203.0.113.9", "203.0.113.9"),  # Compose: only nginx reaches web
        (["127.0.0.1"], "127.0.0.1", "not an address", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
        # gunicorn on a unix socket names no peer: only this host reaches it (diff review).
        (["127.0.0.1"], "", "203.0.113.9", "203.0.113.9"),
        (["127.0.0.1"], "", None, None),
        ([], "127.0.0.1", "203.0.113.9", "127.0.0.1"),
        ([], "", "203.0.113.9", None),  # no proxy trusted: not a socket's either (late review)
    ],
)
def test_x_real_ip_names_the_caller_only_when_a_trusted_proxy_sent_it(settings, trusted, peer, real_ip, seen):
    settings.TRUSTED_PROXIES = trusted

    assert client_ip(request_from(peer, real_ip)) == seen


def test_a_new_x_real_ip_for_each_guess_does_not_get_past_the_lock(client, doctor, settings):
    settings.LOGIN_LOCKOUT_THRESHOLD = 3
    settings.LOGIN_ACCOUNT_LOCKOUT_THRESHOLD = 7
    settings.TRUSTED_PROXIES = ["127.0.0.1", "::1"]

    def login(password: str, guess: int):
        return client.post(
            LOGIN_URL, {"username": doctor.email, "password": password},
            REMOTE_ADDR="10.4.0.12", HTTP_X_REAL_IP=f"192.0.2.{guess}",
        )  # fmt: skip

    for guess in range(3):
        assert login("not-the-password-at-all", guess).status_code == 200
    assert login(PASSWORD, 99).status_code == 200  # refused: the form again, not a redirect

    assert "_auth_user_id" not in client.session
    assert set(AuditEvent.objects.filter(action="auth.login_failed").values_list("client_ip", flat=True)) == {
        "10.4.0.12"
    }


@pytest.mark.parametrize(
    ("environment", "trusted"),
    [
        ({}, ["127.0.0.1", "::1"]),
        ({"FORWARDED_ALLOW_IPS": "*"}, ["*"]),
        # Set to nothing, gunicorn trusts no peer; Pleura trusted localhost (diff review).
        ({"FORWARDED_ALLOW_IPS": ""}, []),
        ({"FORWARDED_ALLOW_IPS": "*", "TRUSTED_PROXIES": ""}, []),
        ({"TRUSTED_PROXIES": "10.4.0.0/16, 127.0.0.1"}, ["10.4.0.0/16", "127.0.0.1"]),
    ],
)
def test_trusted_proxies_are_read_as_gunicorn_reads_its_own(environment, trusted):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(settings.TRUSTED_PROXIES)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings.test", **environment},
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, str(trusted)), result.stderr


@pytest.mark.parametrize("entry", ["nginx", "10.0.0.0/33", "127.0.0.1,web"])
def test_a_trusted_proxy_that_is_not_an_address_stops_the_start_up(entry):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings.test", "TRUSTED_PROXIES": entry},
    )  # fmt: skip
    assert result.returncode != 0
    assert "TRUSTED_PROXIES must list IP addresses or networks (or *), not" in result.stderr
