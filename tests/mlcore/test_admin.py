"""ModelVersion in the admin: superusers only, read-only, with an audited rollback action."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore.models import ModelVersion
from tests.mlcore.helpers import TINY_NAME, compare_with_active

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:mlcore_modelversion_changelist"


@pytest.fixture
def versions(weights_dir):
    """v1 retired, v2 active, v3 a candidate (all on the tiny model's weights)."""
    folder = str(weights_dir / TINY_NAME)
    for name in ("v1", "v2", "v3"):
        call_command("register_model", folder, "--name", name, stdout=io.StringIO())
    call_command("promote_model", "v1", stdout=io.StringIO())
    compare_with_active("v2", roc_auc_gain=0.001)
    call_command("promote_model", "v2", stdout=io.StringIO())
    return {v.name: v for v in ModelVersion.objects.all()}


def _rollback(client, *versions):
    return client.post(
        reverse(CHANGELIST),
        {"action": "roll_back_to_version", "_selected_action": [v.pk for v in versions]},
        follow=True,
    )


def _statuses() -> dict[str, str]:
    return dict(ModelVersion.objects.values_list("name", "status"))


def test_superuser_sees_the_versions_read_only(client_for, superuser, versions):
    client = client_for(superuser)
    listing = client.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert [v.name for v in listing.context["cl"].result_list] == ["v3", "v2", "v1"]

    page = client.get(reverse("admin:mlcore_modelversion_change", args=[versions["v2"].pk]))
    assert page.status_code == 200
    assert versions["v2"].weights_sha256 in page.content.decode()
    assert page.context["adminform"].form.fields == {}  # nothing editable
    assert client.get(reverse("admin:mlcore_modelversion_add")).status_code == 403
    assert client.get(reverse("admin:mlcore_modelversion_delete", args=[versions["v1"].pk])).status_code == 403


@pytest.mark.parametrize("who", ["hospital_admin", "outsider_admin"])
def test_hospital_admins_cannot_see_or_roll_back(request, client_for, versions, who):
    client = client_for(request.getfixturevalue(who))
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(reverse("admin:mlcore_modelversion_change", args=[versions["v1"].pk])).status_code == 403
    assert _rollback(client, versions["v1"]).status_code == 403
    assert "mlcore" not in client.get(reverse("admin:index")).content.decode()
    assert _statuses() == {"v1": "retired", "v2": "active", "v3": "candidate"}
    assert AuditEvent.objects.filter(action=Action.MODEL_ROLLED_BACK).count() == 0


def test_rollback_action_reactivates_a_retired_version_and_is_audited(client_for, superuser, versions):
    response = _rollback(client_for(superuser), versions["v1"])

    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == ["Rolled back: v1 is the active model again."]
    assert _statuses() == {"v1": "active", "v2": "retired", "v3": "candidate"}
    [event] = AuditEvent.objects.filter(action=Action.MODEL_ROLLED_BACK)
    assert event.actor_user == superuser
    assert (event.target_type, event.target_id) == ("modelversion", str(versions["v1"].code))
    assert event.detail == {"name": "v1", "previous": "v2", "via": "admin"}


def test_rollback_action_refuses_candidates_and_several_versions(client_for, superuser, versions):
    client = client_for(superuser)
    response = _rollback(client, versions["v3"])
    assert [str(m) for m in response.context["messages"]] == [
        "v3 is candidate: only a retired (earlier active) version can be rolled back to; "
        "promote candidates with `manage.py promote_model`."
    ]
    response = _rollback(client, versions["v1"], versions["v3"])
    assert [str(m) for m in response.context["messages"]] == ["Select exactly one version to roll back to."]
    assert _statuses() == {"v1": "retired", "v2": "active", "v3": "candidate"}
    assert AuditEvent.objects.filter(action=Action.MODEL_ROLLED_BACK).count() == 0
