"""A page's own polling does not count as the user's activity: an unattended study page
or worklist, polling every 3 s while a study is pending, still times out."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from diagnostics.models import Study

HX = {"HTTP_HX_REQUEST": "true"}


def _seconds_left(client) -> float:
    return (Session.objects.get(pk=client.session.session_key).expire_date - timezone.now()).total_seconds()


def _almost_expired(client) -> None:
    Session.objects.filter(pk=client.session.session_key).update(expire_date=timezone.now() + timedelta(seconds=60))


def test_polling_leaves_an_idle_session_to_expire_and_a_page_the_user_opens_extends_it(
    client_for, doctor, make_study, hospital_a
):
    pending = make_study(hospital_a, status=Study.Status.PROCESSING)
    client = client_for(doctor)
    status_url = reverse("diagnostics:study_status", args=[pending.code])
    updates_url = reverse("diagnostics:worklist_updates") + f"?s={pending.code}"
    assert client.get(reverse("diagnostics:study_detail", args=[pending.code])).status_code == 200

    _almost_expired(client)
    polls = [client.get(status_url, **HX).status_code, client.get(updates_url, **HX).status_code]

    assert polls == [200, 200]
    assert _seconds_left(client) <= 60  # the polls were answered but did not extend it

    assert client.get(reverse("diagnostics:worklist")).status_code == 200
    assert _seconds_left(client) > 29 * 60  # the user's own request did


def test_once_the_idle_limit_passes_the_poll_is_sent_to_sign_in(client_for, doctor, make_study, hospital_a):
    pending = make_study(hospital_a, status=Study.Status.PROCESSING)
    client = client_for(doctor)
    Session.objects.filter(pk=client.session.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))

    poll = client.get(reverse("diagnostics:study_status", args=[pending.code]), **HX)

    assert poll.status_code == 401
    assert poll["HX-Redirect"].startswith("/accounts/login/")
