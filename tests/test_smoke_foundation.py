from __future__ import annotations

import pytest

from hospital.models import AppendOnlyError, AuditEvent


@pytest.mark.django_db
def test_worklist_redirects_anonymous_visitor_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_login_is_audited_and_the_event_cannot_be_changed(client, doctor):
    response = client.post("/accounts/login/", {"username": doctor.email, "password": "correct-horse-battery-9"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor_user == doctor
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.count() == 1
