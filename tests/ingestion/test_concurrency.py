"""Two requests with the same SOP Instance UID at the same moment: the database
constraint decides, both get the same study, and the loser leaves no files behind."""

from __future__ import annotations

import threading

import pytest

from diagnostics import services
from diagnostics.models import Study
from tests.conftest import needs_postgresql
from tests.ingestion.conftest import CR_CHEST, ingest_at_once


@pytest.mark.django_db(transaction=True)
def test_simultaneous_uploads_of_one_instance_make_one_study(hospital_a, stored, monkeypatch):
    needs_postgresql("two requests writing at once (SQLite runs one writing transaction at a time)")
    both_checked = threading.Barrier(2, timeout=30)
    real_existing = services._existing

    def existing_then_wait(hospital, decoded, typed_patient_id, typed_accession):
        found = real_existing(hospital, decoded, typed_patient_id, typed_accession)
        both_checked.wait()  # both requests have seen "not stored yet"
        return found

    monkeypatch.setattr(services, "_existing", existing_then_wait)
    results, errors = ingest_at_once(hospital_a, CR_CHEST.read_bytes())
    assert errors == []
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0].pk == results[1][0].pk
    assert Study.objects.count() == 1
    study = Study.objects.get()
    assert stored().files == {study.original_file.name}
