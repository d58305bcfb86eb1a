"""config.db.insert_together: new rows of different tables stored all or none, as one
statement on PostgreSQL (one round trip where an atomic block of saves is four) and in one
transaction elsewhere; inside a caller's transaction a failure leaves it usable."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from config.db import insert_together
from hospital.models import AuditEvent, Hospital


def new_rows(slug: str = "riverside") -> tuple[Hospital, AuditEvent]:
    return Hospital(name="Riverside", slug=slug), AuditEvent(action="test.inserted", detail={"n": 1})


def inserts(queries: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in queries.captured_queries if "INSERT" in query["sql"]]


@pytest.mark.django_db
def test_the_rows_are_stored_with_their_keys():
    hospital, event = new_rows()

    with CaptureQueriesContext(connection) as queries:
        insert_together(hospital, event)

    assert Hospital.objects.get(pk=hospital.pk).slug == "riverside"
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.action, stored.detail, stored.created_at) == ("test.inserted", {"n": 1}, event.created_at)
    assert (hospital._state.adding, event._state.adding) == (False, False)
    if connection.vendor == "postgresql":
        [statement] = inserts(queries)
        assert statement.startswith('WITH new_0 AS (INSERT INTO "hospital_hospital"')
        assert 'new_1 AS (INSERT INTO "hospital_auditevent"' in statement
    else:
        assert len(inserts(queries)) == 2


@pytest.mark.django_db
def test_one_row_refused_stores_neither_and_the_callers_transaction_goes_on(hospital_a):
    events = AuditEvent.objects.count()
    hospital, event = new_rows(slug=hospital_a.slug)  # the slug is taken

    with pytest.raises(IntegrityError):
        insert_together(hospital, event)

    assert (AuditEvent.objects.count(), Hospital.objects.count()) == (events, 1)
    assert (hospital.pk, event.pk) == (None, None)


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_rows_are_committed_together_or_not_at_all(hospital_a):
    assert not connection.in_atomic_block
    hospital, event = new_rows()
    insert_together(hospital, event)
    refused, refused_event = new_rows(slug=hospital_a.slug)

    with pytest.raises(IntegrityError):
        insert_together(refused, refused_event)

    assert connection.get_autocommit()
    assert sorted(Hospital.objects.values_list("slug", flat=True)) == ["riverside", "st-marys"]
    assert list(AuditEvent.objects.filter(action="test.inserted").values_list("pk", flat=True)) == [event.pk]
