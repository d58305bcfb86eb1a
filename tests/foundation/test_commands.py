"""Operations commands: they work, they are audited, and bad input gets a sentence and a
non-zero exit, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from hospital.management.commands.seed_demo import DEMO_PASSWORD
from hospital.models import AuditEvent, Hospital, IntegrationKey, Membership, hash_api_key
from tests.conftest import PASSWORD, REPO_ROOT


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


# -- create_hospital ----------------------------------------------------------


def test_create_hospital_creates_and_audits(db):
    out = run("create_hospital", "--name", "North Clinic", "--slug", "north")
    hospital = Hospital.objects.get(slug="north")
    assert (hospital.name, hospital.is_active, hospital.shares_reviews_for_training) == ("North Clinic", True, False)
    assert out == "Created hospital North Clinic (slug north).\n"
    event = AuditEvent.objects.get()
    assert (event.action, event.hospital, event.target_id, event.actor_user) == (
        "hospital.created",
        hospital,
        str(hospital.code),
        None,
    )


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("st-marys", "slug: Hospital with this Slug already exists."),
        ("not a slug", "slug: Enter a valid “slug”"),
    ],
)
def test_create_hospital_refuses_bad_input(hospital_a, slug, message):
    with pytest.raises(CommandError, match=message):
        run("create_hospital", "--name", "Other", "--slug", slug)
    assert Hospital.objects.count() == 1
    assert AuditEvent.objects.count() == 0


# -- create_user --------------------------------------------------------------


def test_create_user_creates_a_member_with_role_and_audits(hospital_a):
    out = run(
        "create_user", "--hospital", "st-marys", "--role", "hospital_admin", "--email", "Boss@StMarys.example",
        "--password", PASSWORD,
    )  # fmt: skip
    user = User.objects.get(email="boss@stmarys.example")
    assert user.check_password(PASSWORD)
    assert (user.is_staff, user.is_superuser) == (True, False)  # staff follows the hospital_admin role
    assert list(user.memberships.values_list("hospital__slug", "role", "is_active")) == [
        ("st-marys", "hospital_admin", True)
    ]
    assert out == "Created boss@stmarys.example as Hospital admin at St Mary's Hospital.\n"
    assert _actions() == ["user.created", "membership.created"]
    assert AuditEvent.objects.get(action="membership.created").detail == {
        "user": str(user.code),
        "role": "hospital_admin",
        "staff": True,
    }


@pytest.mark.parametrize(
    ("hospital", "role", "email", "password", "message"),
    [
        ("nowhere", "doctor", "a@b.example", PASSWORD, "No hospital with slug 'nowhere'"),
        ("st-marys", "nurse", "a@b.example", PASSWORD, "Unknown role 'nurse'"),
        ("st-marys", "doctor", "not-an-email", PASSWORD, "'not-an-email' is not a valid email address."),
        ("st-marys", "doctor", "a@b.example", "short", "This password is too short"),
        ("st-marys", "doctor", "a@b.example", "password1234", "This password is too common."),
        ("st-marys", "doctor", "a@b.example", "839210384756", "This password is entirely numeric."),
        ("st-marys", "doctor", "doctor@stmarys.example", PASSWORD, "already exists"),
    ],
)
def test_create_user_refuses_bad_input(doctor, hospital, role, email, password, message):
    with pytest.raises(CommandError, match=message):
        run("create_user", "--hospital", hospital, "--role", role, "--email", email, "--password", password)
    assert list(User.objects.values_list("email", flat=True)) == ["doctor@stmarys.example"]
    assert Membership.objects.count() == 1
    assert AuditEvent.objects.count() == 0


def test_create_user_refuses_a_deactivated_hospital(hospital_a):
    Hospital.objects.filter(pk=hospital_a.pk).update(is_active=False)
    with pytest.raises(
        CommandError, match=re.escape("The hospital 'st-marys' is deactivated: reactivate it in the admin first.")
    ):
        run(
            "create_user",
            "--hospital",
            "st-marys",
            "--role",
            "doctor",
            "--email",
            "a@b.example",
            "--password",
            PASSWORD,
        )
    assert User.objects.count() == 0


def test_a_command_error_exits_non_zero_with_the_message_on_stderr():
    result = subprocess.run(
        [sys.executable, "manage.py", "create_user", "--hospital", "x", "--role", "nurse", "--email", "a@b.example",
         "--password", PASSWORD],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "CommandError: Unknown role 'nurse'. Use one of: doctor, radiologist, hospital_admin."
    )
    assert "Traceback" not in result.stderr


# -- create_api_key -----------------------------------------------------------


def test_create_api_key_prints_the_key_alone_on_the_last_line(hospital_a):
    out = run("create_api_key", "--hospital", "st-marys", "--name", "EMR production")
    raw_key = out.splitlines()[-1]
    key = IntegrationKey.objects.get()
    assert (key.hospital, key.name, key.key_hash, key.revoked_at) == (
        hospital_a,
        "EMR production",
        hash_api_key(raw_key),
        None,
    )
    assert raw_key.startswith(key.prefix)
    assert len(raw_key) == len("plr_") + 43
    event = AuditEvent.objects.get()
    assert (event.action, event.hospital, event.detail) == ("key.created", hospital_a, {"prefix": key.prefix})


@pytest.mark.parametrize(
    ("hospital", "name", "message"),
    [
        ("nowhere", "EMR", "No hospital with slug 'nowhere'"),
        ("st-marys", "   ", "The key needs a name"),
        ("st-marys", "x" * 101, "too long"),
        ("st-marys", "EMR St Mary's", "already has a key named"),
    ],
)
def test_create_api_key_refuses_bad_input(key_a, hospital, name, message):
    with pytest.raises(CommandError, match=message):
        run("create_api_key", "--hospital", hospital, "--name", name)
    assert IntegrationKey.objects.count() == 1
    assert AuditEvent.objects.count() == 0


# -- seed_demo ----------------------------------------------------------------


def test_seed_demo_creates_two_hospitals_with_three_roles_and_is_idempotent(client, db):
    first = run("seed_demo")
    events_after_first = AuditEvent.objects.count()
    second = run("seed_demo")

    assert sorted(Hospital.objects.values_list("slug", flat=True)) == ["demo-childrens", "demo-general"]
    assert sorted(Membership.objects.values_list("hospital__slug", "role")) == [
        (slug, role)
        for slug in ("demo-childrens", "demo-general")
        for role in ("doctor", "hospital_admin", "radiologist")
    ]
    assert User.objects.count() == 6
    assert sorted(User.objects.filter(is_staff=True).values_list("email", flat=True)) == [
        "hospital-admin@demo-childrens.example",
        "hospital-admin@demo-general.example",
    ]
    assert AuditEvent.objects.count() == events_after_first == 2 + 6 * 2
    assert first.splitlines()[0] == "Demo data ready (8 object(s) created or repaired)."
    assert second.splitlines()[0] == "Demo data ready (0 object(s) created or repaired)."
    for email in User.objects.values_list("email", flat=True):
        assert email in second
        assert client.login(username=email, password=DEMO_PASSWORD)


def test_seed_demo_repairs_a_changed_demo_password(db):
    run("seed_demo")
    user = User.objects.get(email="doctor@demo-general.example")
    user.set_password("someone-changed-it-123")
    user.save()
    out = run("seed_demo")
    user.refresh_from_db()
    assert user.check_password(DEMO_PASSWORD)
    assert out.splitlines()[0] == "Demo data ready (1 object(s) created or repaired)."


def test_seed_demo_is_refused_where_demo_accounts_are_not_allowed(db, settings):
    settings.DEMO_SEED_ALLOWED = False
    with pytest.raises(CommandError, match="seed_demo is disabled in this environment"):
        run("seed_demo")
    assert User.objects.count() == Hospital.objects.count() == 0


def test_seed_demo_logins_only_prints_and_changes_nothing(db):
    out = run("seed_demo", "--logins")
    assert out.splitlines()[0] == f"Demo logins (password for all: {DEMO_PASSWORD}):"
    assert len(out.splitlines()) == 7
    assert User.objects.count() == Hospital.objects.count() == 0


def test_an_operator_revokes_a_leaked_key_from_the_command_line_and_it_is_audited(hospital_a, key_a, superuser):
    key, raw_key = key_a
    out = StringIO()

    call_command("revoke_api_key", "--hospital", "st-marys", "--prefix", f"{key.prefix}…", "--actor", superuser.email,
                 stdout=out)  # fmt: skip
    call_command("revoke_api_key", "--hospital", "st-marys", "--prefix", key.prefix, "--actor", superuser.email,
                 stdout=out)  # fmt: skip

    key.refresh_from_db()
    assert out.getvalue().splitlines() == [
        f"Revoked the key \"EMR St Mary's\" ({key.prefix}) of St Mary's Hospital: every call with it is now refused.",
        f"The key \"EMR St Mary's\" ({key.prefix}) of St Mary's Hospital was already revoked, on "
        f"{key.revoked_at:%Y-%m-%d %H:%M} UTC.",
    ]
    assert IntegrationKey.find_usable(raw_key) is None
    (event,) = AuditEvent.objects.filter(action="key.revoked")
    assert (event.hospital, event.actor_user, event.target_id) == (hospital_a, superuser, str(key.code))


@pytest.mark.parametrize(
    ("prefix", "actor", "message"),
    [
        ("plr_nope", "SUPERUSER", "St Mary's Hospital has no integration key with prefix 'plr_nope'."),
        ("KEY", "admin@stmarys.example",
         "--actor must be the email of an active superuser, not 'admin@stmarys.example'."),
    ],
)  # fmt: skip
def test_a_revocation_the_command_cannot_make_says_why_and_changes_nothing(
    hospital_a, key_a, superuser, hospital_admin, prefix, actor, message
):
    key = key_a[0]
    arguments = {"SUPERUSER": superuser.email, "KEY": key.prefix}
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("revoke_api_key", "--hospital", "st-marys", "--prefix", arguments.get(prefix, prefix),
                     "--actor", arguments.get(actor, actor))  # fmt: skip
    key.refresh_from_db()
    assert key.revoked_at is None


def test_an_operator_exports_one_hospitals_trail_for_the_days_asked_owner_only(
    tmp_path, hospital_a, hospital_b, doctor, outsider, superuser
):
    import csv
    import json
    from datetime import UTC, datetime

    from hospital import audit

    hospital_a.time_zone = "America/New_York"
    hospital_a.save()
    for moment, hospital, actor in [
        (datetime(2026, 3, 1, 4, 59, tzinfo=UTC), hospital_a, doctor),  # 28 Feb in New York
        (datetime(2026, 3, 1, 5, 0, tzinfo=UTC), hospital_a, doctor),  # 1 March there
        (datetime(2026, 3, 2, 12, 0, tzinfo=UTC), hospital_b, outsider),  # another hospital's
        (datetime(2026, 3, 3, 4, 59, tzinfo=UTC), hospital_a, doctor),  # still 2 March there
        (datetime(2026, 3, 3, 5, 0, tzinfo=UTC), hospital_a, doctor),  # 3 March there
    ]:
        event = audit.build(audit.Action.IMAGE_VIEWED, actor=actor, hospital=hospital, image="heatmap")
        event.created_at = moment
        event.save()
    out = tmp_path / "trail.csv"

    call_command("export_audit_trail", "--hospital", "st-marys", "--since", "2026-03-01", "--until", "2026-03-02",
                 "--out", str(out), "--actor", superuser.email, stdout=StringIO())  # fmt: skip

    rows = list(csv.DictReader(out.open()))
    assert [(row["time_utc"], row["actor"], json.loads(row["detail"])) for row in rows] == [
        ("2026-03-01T05:00:00+00:00", doctor.email, {"image": "heatmap"}),
        ("2026-03-03T04:59:00+00:00", doctor.email, {"image": "heatmap"}),
    ]
    assert out.stat().st_mode & 0o777 == 0o600
    exported = AuditEvent.objects.get(action="audit.viewed")
    assert (exported.hospital, exported.actor_user, exported.detail) == (
        hospital_a, superuser, {"exported": 2, "since": "2026-03-01", "until": "2026-03-02"},
    )  # fmt: skip
    with pytest.raises(CommandError, match="exists already: name a new file"):
        call_command("export_audit_trail", "--hospital", "st-marys", "--out", str(out), "--actor", superuser.email)


def test_a_leaked_key_given_whole_is_revoked_by_its_prefix_and_never_printed(hospital_a, key_a, superuser):
    """The whole key was refused, and printed back in the refusal (operator review)."""
    key, raw_key = key_a
    out = StringIO()
    call_command(
        "revoke_api_key", "--hospital", "st-marys", "--prefix", raw_key, "--actor", superuser.email, stdout=out
    )
    with pytest.raises(CommandError) as refused:
        call_command("revoke_api_key", "--hospital", "st-marys", "--prefix", "plr_" + "X" * 43,
                     "--actor", superuser.email)  # fmt: skip

    key.refresh_from_db()
    assert key.revoked_at is not None
    assert raw_key not in out.getvalue()
    assert str(refused.value) == "St Mary's Hospital has no integration key with prefix 'plr_XXXXXXXX'."


def test_a_deactivated_hospitals_trail_is_exported_and_its_keys_revoked(tmp_path, hospital_a, key_a, superuser, doctor):
    """A hospital that left the service is the archive's very case (operator review)."""
    import csv

    from hospital import audit

    key = key_a[0]
    IntegrationKey.objects.filter(pk=key.pk).update(name="=HYPERLINK(1)")  # an admin's name for it
    key.refresh_from_db()
    audit.record(audit.Action.STUDY_LISTED, actor=doctor, hospital=hospital_a, count=1)
    audit.record(audit.Action.STUDY_LISTED, key=key, hospital=hospital_a, count=2)
    Hospital.objects.filter(pk=hospital_a.pk).update(is_active=False)
    out = tmp_path / "trail.csv"

    call_command("export_audit_trail", "--hospital", "st-marys", "--out", str(out), "--actor", superuser.email,
                 stdout=StringIO())  # fmt: skip
    call_command("revoke_api_key", "--hospital", "st-marys", "--prefix", key_a[0].prefix, "--actor", superuser.email,
                 stdout=StringIO())  # fmt: skip

    rows = list(csv.DictReader(out.open()))
    assert [(row["actor"], row["actor_key"], row["detail"]) for row in rows] == [
        (doctor.email, "", '{"count": 1}'),
        ("", f"'=HYPERLINK(1) ({key.prefix})", '{"count": 2}'),  # text, never a spreadsheet formula
    ]
    assert not list(tmp_path.glob("*.partial-*"))


def test_a_day_that_is_not_one_is_refused_in_words(tmp_path, superuser):
    with pytest.raises(CommandError, match=re.escape("'2026-02-30' is not a day: write it YYYY-MM-DD.")):
        call_command("export_audit_trail", "--hospital", "st-marys", "--out", str(tmp_path / "x.csv"),
                     "--since", "2026-02-30", "--actor", superuser.email)  # fmt: skip
