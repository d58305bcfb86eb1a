"""The audit trail is append-only: not through the ORM, not through the admin (for
anyone), and on PostgreSQL not even through raw SQL."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse

from hospital import audit
from hospital.models import AppendOnlyError, AuditEvent, Membership, Role
from tests.conftest import PASSWORD, needs_postgresql


@pytest.fixture
def event(doctor, hospital_a):
    return audit.record(audit.Action.STUDY_VIEWED, actor=doctor, hospital=hospital_a, target=hospital_a, count=1)


def test_orm_refuses_to_change_or_delete_an_event(event):
    event.action = "auth.login"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="auth.login")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    stored = AuditEvent.objects.get()
    assert (stored.action, stored.detail) == ("study.viewed", {"count": 1})


@pytest.mark.parametrize("user_fixture", ["hospital_admin", "superuser"])
def test_admin_refuses_to_add_change_or_delete_an_event_even_for_superusers(request, client_for, event, user_fixture):
    client = client_for(request.getfixturevalue(user_fixture))
    change_url = f"/admin/hospital/auditevent/{event.pk}/change/"
    assert client.get(change_url).status_code == 200  # read-only view
    assert client.post(change_url, {"action": "auth.login", "outcome": "failure"}).status_code == 403
    assert client.post(f"/admin/hospital/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/hospital/auditevent/add/").status_code == 403
    response = client.post("/admin/hospital/auditevent/", {"action": "delete_selected", "_selected_action": [event.pk]})
    assert response.status_code in {200, 302}
    # (force_login added an auth.login event, and the readings audit.viewed ones)
    untouched = AuditEvent.objects.exclude(action__in=["auth.login", "audit.viewed", "access.denied"])
    assert list(untouched.values_list("pk", "action", "outcome")) == [(event.pk, "study.viewed", "success")]
    refused = AuditEvent.objects.filter(action="access.denied").order_by("id")
    assert [(e.outcome, e.detail["path"]) for e in refused] == [
        ("denied", change_url), ("denied", f"/admin/hospital/auditevent/{event.pk}/delete/"),
        ("denied", "/admin/hospital/auditevent/add/"),
    ]  # fmt: skip


def _require_postgresql() -> None:
    needs_postgresql("the append-only trigger exists on PostgreSQL only")


@pytest.mark.services
def test_postgresql_refuses_raw_sql_update_and_delete_of_events(event):
    _require_postgresql()
    table = AuditEvent._meta.db_table
    for statement in (f"UPDATE {table} SET action = 'auth.login' WHERE id = %s", f"DELETE FROM {table} WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [event.pk])
    stored = AuditEvent.objects.get()
    assert (stored.pk, stored.action) == (event.pk, "study.viewed")


@pytest.mark.services
def test_postgresql_still_accepts_new_events(event, hospital_a):
    _require_postgresql()
    audit.record(audit.Action.STUDY_LISTED, hospital=hospital_a)
    assert AuditEvent.objects.count() == 2


def test_events_name_targets_by_public_id_and_carry_the_client_ip(client, doctor, hospital_a):
    client.post(
        "/accounts/login/", {"username": doctor.email, "password": "correct-horse-battery-9"}, REMOTE_ADDR="10.1.2.3"
    )
    event = AuditEvent.objects.get(action="auth.login")
    assert (event.actor_user, event.hospital, event.target_type, event.target_id, event.client_ip) == (
        doctor,
        hospital_a,
        "user",
        str(doctor.code),
        "10.1.2.3",
    )


def test_an_event_about_a_user_is_filed_under_the_hospital_they_work_in_now(superuser, shared_radiologist, hospital_b):
    """Filed under a hospital they left, it would be read by its admins and missed by
    their current hospital's."""
    from accounts import services

    shared_radiologist.memberships.filter(hospital=hospital_b).update(is_active=False)

    services.set_password(shared_radiologist, "another-long-passphrase-9", actor=superuser)
    services.deactivate_user(shared_radiologist, actor=superuser)

    assert list(AuditEvent.objects.order_by("id").values_list("action", "hospital__slug")) == [
        ("user.changed", "st-marys"),
        ("user.deactivated", "st-marys"),
    ]


@pytest.mark.parametrize("user_fixture", ["hospital_admin", "superuser"])
def test_reading_studies_and_the_trail_in_the_admin_is_recorded_as_in_the_portal(
    request, client_for, user_fixture, hospital_a, make_study
):
    reader = request.getfixturevalue(user_fixture)
    study = make_study(hospital_a, accession_number="ACC-7001")
    client = client_for(reader)

    for path in (f"/admin/diagnostics/study/?q={study.code}", f"/admin/diagnostics/study/{study.pk}/change/",
                 "/admin/hospital/auditevent/?action=study.viewed"):  # fmt: skip
        assert client.get(path).status_code == 200

    reads = AuditEvent.objects.filter(actor_user=reader, action__in=["study.listed", "study.viewed", "audit.viewed"])
    # Filed under the hospital whose rows were shown, a platform operator's reading too.
    assert [(e.action, e.hospital_id, e.target_id, e.detail) for e in reads.order_by("id")] == [
        (
            "study.listed",
            hospital_a.pk,
            "",
            {"via": "admin", "count": 1, "filters": ["q"], "studies": [str(study.code)]},
        ),
        ("study.viewed", hospital_a.pk, str(study.code), {"via": "admin"}),
        ("audit.viewed", hospital_a.pk, "", {"via": "admin", "count": 1, "filters": ["action"]}),
    ]
    assert "ACC-7001" not in str([e.detail for e in reads])  # what was searched for is not kept


def test_an_admin_list_read_is_filed_under_each_hospital_whose_rows_it_showed(
    client_for, hospital_admin, hospital_a, hospital_b, make_study
):
    """St Mary's admin, also a doctor at Riverside (active there, first by name), listing
    St Mary's studies: the event went to Riverside's trail and St Mary's had nothing."""
    Membership.objects.create(user=hospital_admin, hospital=hospital_b, role=Role.DOCTOR)
    older, newer = make_study(hospital_a), make_study(hospital_a)
    client = client_for(hospital_admin)
    client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_b.code)})

    assert client.get("/admin/diagnostics/study/").status_code == 200

    listed = AuditEvent.objects.filter(action="study.listed", actor_user=hospital_admin)
    assert [(e.hospital_id, e.detail["count"], sorted(e.detail["studies"])) for e in listed] == [
        (hospital_a.pk, 2, sorted([str(older.code), str(newer.code)]))
    ]


def test_an_event_about_a_user_of_two_hospitals_is_in_both_trails(superuser, shared_radiologist):
    """Filed under the first hospital by name, St Mary's never learned that its radiologist
    was deactivated or locked out (audit review)."""
    from accounts import services

    services.unlock_user(shared_radiologist, actor=superuser)
    services.deactivate_user(shared_radiologist, actor=superuser)
    Client().post(reverse("accounts:login"), {"username": shared_radiologist.email, "password": "wrong-guess-1"})

    assert sorted(AuditEvent.objects.values_list("action", "hospital__slug", "target_id", "outcome")) == [
        ("auth.login_failed", "riverside", str(shared_radiologist.code), "failure"),
        ("auth.login_failed", "st-marys", str(shared_radiologist.code), "failure"),
        ("user.changed", "riverside", str(shared_radiologist.code), "success"),
        ("user.changed", "st-marys", str(shared_radiologist.code), "success"),
        ("user.deactivated", "riverside", str(shared_radiologist.code), "success"),
        ("user.deactivated", "st-marys", str(shared_radiologist.code), "success"),
    ]


@pytest.fixture
def audit_writes_fail(monkeypatch):
    """`audit_writes_fail()`: from then on every audit write fails, as a full disk or a lost
    connection fails it."""

    def refuse(*args, **kwargs):
        raise DatabaseError("could not extend file")

    def start():
        monkeypatch.setattr(audit, "record", refuse)
        monkeypatch.setattr(audit, "record_all", refuse)

    return start


def test_an_admins_password_reset_is_not_saved_without_its_event(client_for, hospital_admin, doctor, audit_writes_fail):
    portal = client_for(hospital_admin)
    portal.raise_request_exception = False
    audit_writes_fail()
    response = portal.post(
        f"/admin/accounts/user/{doctor.pk}/password/",
        {"password1": "another-long-passphrase-9", "password2": "another-long-passphrase-9", "usable_password": "true"},
    )
    doctor.refresh_from_db()
    assert (response.status_code, doctor.check_password("another-long-passphrase-9")) == (500, False)
    # Django queued its success message before the audit write failed; the next page must
    # not say the reset happened.
    next_page = portal.get(f"/admin/accounts/user/{doctor.pk}/change/")
    assert [str(message) for message in next_page.context["messages"]] == []


def test_ones_own_password_change_is_not_saved_without_its_event(client_for, doctor, audit_writes_fail):
    portal = client_for(doctor)
    portal.raise_request_exception = False
    audit_writes_fail()
    response = portal.post(
        reverse("accounts:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "another-long-passphrase-9",
            "new_password2": "another-long-passphrase-9",
        },
    )
    doctor.refresh_from_db()
    assert (response.status_code, doctor.check_password(PASSWORD)) == (500, True)


def test_opening_one_event_of_the_trail_in_the_admin_is_recorded(client_for, hospital_admin, hospital_a):
    """The list was recorded, a single event's page was not (audit review)."""
    read = audit.record(audit.Action.LOGIN, hospital=hospital_a)

    assert client_for(hospital_admin).get(f"/admin/hospital/auditevent/{read.pk}/change/").status_code == 200

    event = AuditEvent.objects.filter(actor_user=hospital_admin, action="audit.viewed").get()
    assert (event.hospital, event.detail) == (hospital_a, {"via": "admin", "event": read.pk})


@pytest.mark.parametrize("path", ["/admin/hospital/auditevent/", "/admin/diagnostics/study/"])
def test_the_admin_lists_of_events_and_studies_ask_no_whole_table_question(client_for, hospital_admin, path):
    """Each of the events list's count, first and last date, distinct years and distinct
    actions read all of a hospital's events through a subquery: 13 to 18 s with 3 million
    (scale review). The lists filter on the hospital column and show ranges of dates."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(hospital_admin)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200

    table = "HOSPITAL_AUDITEVENT" if "auditevent" in path else "DIAGNOSTICS_STUDY"
    listed = [q["sql"].upper() for q in queries.captured_queries if f'FROM "{table}"' in q["sql"].upper()]
    whole_table = [sql for sql in listed if "DISTINCT" in sql or "MIN(" in sql or "MAX(" in sql or "IN (SELECT" in sql]
    assert (len(listed) > 0, whole_table) == (True, [])


def test_on_postgresql_a_studys_events_and_lists_are_found_by_their_indexes(doctor, hospital_a):
    """Found by a text match inside each list event, "who saw this study?" read every list
    event of the hospital (9 to 10 s over 3 million; scale review)."""
    import uuid

    from django.db import connection

    from tests.conftest import needs_postgresql

    needs_postgresql("a GIN index over the list events' studies")
    code = "3f1c2a9e-6a51-4d1c-9a8e-0a3e6b3c6a51"
    audit.record(audit.Action.STUDY_LISTED, actor=doctor, hospital=hospital_a, count=2, studies=[code, "other"])
    others = [str(uuid.uuid4()) for _ in range(25)]
    audit.record_all(  # a worklist's day of readings that never showed it
        [
            audit.build(audit.Action.STUDY_LISTED, actor=doctor, hospital=hospital_a, studies=others)
            for _ in range(10000)
        ]
    )
    listed = AuditEvent.objects.filter(action="study.listed", detail__studies__contains=[code])  # as about_study

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE hospital_auditevent")
        cursor.execute("SET LOCAL enable_seqscan = off")  # a table this small is read whole otherwise
        sql, params = listed.order_by().values("pk").query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(
            "SELECT pg_class.relname FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_index.indisvalid AND pg_class.relname LIKE 'audit_event_%%' ORDER BY 1"
        )
        indexes = [row[0] for row in cursor.fetchall()]

    assert [e.detail["count"] for e in AuditEvent.objects.for_hospital(hospital_a).about_study(code)] == [2]
    assert indexes == ["audit_event_listed_studies", "audit_event_target"]
    assert "Bitmap Index Scan on audit_event_listed_studies" in plan
