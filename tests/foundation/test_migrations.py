"""Data migrations, run as a deployment runs them: from the previous state, on rows that
were stored before."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from diagnostics import pipeline

# Each app where it stood then: hospital's later migrations (0003, its time zone) too.
HOSPITAL_THEN = ("hospital", "0002_auditevent_append_only_trigger")
BEFORE_FAILURE_CODES = [("diagnostics", "0003_study_index_hospital_pixels"), HOSPITAL_THEN]
FAILURE_CODES = [("diagnostics", "0004_study_failure_code"), HOSPITAL_THEN]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def back_to_the_latest_schema():
    """The database goes back to every app's last migration afterwards: left at 0004, the
    tests after this one met a schema without the later columns."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_studies_failed_before_codes_were_kept_get_the_code_of_their_message():
    apps = migrate(BEFORE_FAILURE_CODES)
    Hospital = apps.get_model("hospital", "Hospital")
    Study = apps.get_model("diagnostics", "Study")
    hospital = Hospital.objects.create(name="St Mary's", slug="stmarys")

    def study(status: str, failure_reason: str):
        return Study.objects.create(
            hospital=hospital,
            status=status,
            failure_reason=failure_reason,
            source="api",
            original_format="jpg",
            original_sha256="0" * 64,
            original_size=1,
            original_file="studies/stmarys/x/original.jpg",
        ).pk

    missing = study("failed", pipeline.MISSING_FILE_MESSAGE)
    undecodable = study("failed", pipeline.UNDECODABLE_MESSAGE)
    model_error = study("failed", pipeline.INFERENCE_ERROR_MESSAGE)
    gave_up = study("failed", pipeline.GAVE_UP_MESSAGE.format(attempts=5))
    unknown = study("failed", "Could not decode the image.")
    completed = study("completed", "")

    apps = migrate(FAILURE_CODES)

    codes = dict(apps.get_model("diagnostics", "Study").objects.values_list("pk", "failure_code"))
    assert codes == {
        missing: "missing_file",
        undecodable: "undecodable",
        model_error: "inference_error",
        gave_up: "gave_up",
        unknown: "",
        completed: "",
    }


# Tables that grow with every study. Their indexes from the first release (0001 to 0004)
# were built on tables a new installation has empty; every later one meets a table in use.
GROWING_TABLES = {
    ("diagnostics", "study"), ("diagnostics", "prediction"), ("diagnostics", "review"), ("hospital", "auditevent"),
}  # fmt: skip
FIRST_RELEASE = {"diagnostics": "0004", "hospital": "0004"}


def test_indexes_added_to_a_growing_table_after_the_first_release_are_built_concurrently():
    """0007 and 0008 built theirs with a plain CREATE INDEX, which made every upload, claim
    and result wait until the index was built (code review). Removing one builds it when the
    migration is reversed (diff review: 0009's RemoveConstraint)."""
    from django.db.migrations import AddConstraint, AddIndex, RemoveConstraint, RemoveIndex
    from django.db.migrations.loader import MigrationLoader

    from config.concurrent_index import AddConstraintConcurrentlyOnPostgreSQL as ConcurrentConstraint
    from config.concurrent_index import AddIndexConcurrentlyOnPostgreSQL as ConcurrentIndex
    from config.concurrent_index import RemoveConstraintConcurrentlyOnPostgreSQL as ConcurrentRemoval

    plain = []
    checked = 0
    for (app, name), migration in MigrationLoader(None, ignore_no_migrations=True).disk_migrations.items():
        if app not in FIRST_RELEASE or name[:4] <= FIRST_RELEASE[app]:
            continue
        for operation in migration.operations:
            builds = AddIndex | AddConstraint | RemoveIndex | RemoveConstraint
            if isinstance(operation, builds) and (app, operation.model_name) in GROWING_TABLES:
                checked += 1
                concurrent = isinstance(operation, ConcurrentIndex | ConcurrentConstraint | ConcurrentRemoval)
                if not concurrent or migration.atomic:
                    plain.append(f"{app}.{name}: {operation.describe()}")
    assert checked == 9  # diagnostics 0005, 0007, 0008's two, 0010's two, 0011's two; hospital 0005
    assert plain == []


@pytest.mark.django_db
def test_the_concurrent_operations_write_what_the_plain_ones_would_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("CONCURRENTLY is PostgreSQL's (the plain statement elsewhere)")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'diagnostics_study' AND indexname = ANY(%s)",
            [["one_study_per_idempotency_key_per_hospital", "diagnostics_hospita_7a32a4_idx"]],
        )
        indexes = dict(cursor.fetchall())
    assert indexes == {
        "one_study_per_idempotency_key_per_hospital": "CREATE UNIQUE INDEX one_study_per_idempotency_key_per_hospital "
        "ON public.diagnostics_study USING btree (hospital_id, idempotency_key) "
        "WHERE (NOT ((idempotency_key)::text = ''::text))",
        "diagnostics_hospita_7a32a4_idx": "CREATE INDEX diagnostics_hospita_7a32a4_idx ON public.diagnostics_study "
        "USING btree (hospital_id, accession_number)",
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_the_filed_instance_rule_is_built_again_after_a_failed_build_and_reversed_concurrently():
    """A build cancelled by a timeout left an INVALID index under its name and 0009's columns
    committed: `migrate` could not be run again. Reversed, the old rule was built with a
    plain CREATE UNIQUE INDEX (diff review)."""
    if connection.vendor != "postgresql":
        pytest.skip("CONCURRENTLY and INVALID indexes are PostgreSQL's")
    before, rule = [("diagnostics", "0009_study_withdrawal")], "one_filed_study_per_sop_instance_per_hospital"
    migrate(before)
    with connection.cursor() as cursor:
        # What a cancelled CREATE INDEX CONCURRENTLY leaves: the index, marked invalid.
        cursor.execute(f'CREATE UNIQUE INDEX "{rule}" ON diagnostics_study (hospital_id, sop_instance_uid)')
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", [f'"{rule}"'])

    migrate([("diagnostics", "0010_one_filed_study_per_sop_instance")])
    built = _index_definitions()
    migrate(before)
    reversed_to = _index_definitions()

    assert built == {
        rule: (
            f"CREATE UNIQUE INDEX {rule} ON public.diagnostics_study USING btree (hospital_id, sop_instance_uid) "
            "WHERE ((NOT ((sop_instance_uid)::text = ''::text)) AND (withdrawn_at IS NULL))",
            True,
        )
    }
    assert reversed_to == {
        "one_study_per_sop_instance_per_hospital": (
            "CREATE UNIQUE INDEX one_study_per_sop_instance_per_hospital ON public.diagnostics_study USING btree "
            "(hospital_id, sop_instance_uid) WHERE (NOT ((sop_instance_uid)::text = ''::text))",
            True,
        )
    }


def _index_definitions() -> dict[str, tuple[str, bool]]:
    """The study table's SOP Instance UID rules: each one's definition, and whether valid."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'one_%%sop_instance_per_hospital'"
        )
        return {name: (definition, valid) for name, definition, valid in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_the_previous_release_still_stores_studies_on_the_withdrawal_schema(hospital_a):
    """deploy/README: the old pods serve on the new schema while it migrates. withdrawal_reason
    had a default in Python only, and every upload of the previous release was a 500 (NOT NULL)
    until the new pods took over (operator review)."""
    migrate([("diagnostics", "0010_one_filed_study_per_sop_instance")])
    previous = MigrationExecutor(connection).loader.project_state([("diagnostics", "0008_search_indexes")]).apps
    Study = previous.get_model("diagnostics", "Study")

    Study.objects.create(
        hospital_id=hospital_a.pk, source="api", original_format="dcm", original_sha256="0" * 64, original_size=1,
        original_file="studies/x/original.dcm",
    )  # fmt: skip

    from diagnostics.models import Study as Current

    assert list(Current.objects.values_list("withdrawal_reason", "withdrawn_at")) == [("", None)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_reversing_the_filed_instance_rule_over_rows_it_forbids_says_so_and_leaves_no_invalid_index(hospital_a):
    """A withdrawn instance filed again makes two studies of one SOP Instance UID: migrating
    back printed seventy lines of traceback and left an invalid index (operator review)."""
    from django.core.management.base import CommandError

    if connection.vendor != "postgresql":
        pytest.skip("CONCURRENTLY and INVALID indexes are PostgreSQL's")
    from django.utils import timezone

    from diagnostics.models import Study

    for withdrawn_at in (timezone.now(), None):
        Study.objects.create(
            hospital=hospital_a, source="api", original_format="dcm", original_sha256="0" * 64, original_size=1,
            original_file="studies/x/original.dcm", sop_instance_uid="1.2.3.4", withdrawn_at=withdrawn_at,
        )  # fmt: skip

    with pytest.raises(CommandError, match="cannot be built: the table holds rows it forbids") as refused:
        migrate([("diagnostics", "0009_study_withdrawal")])

    assert "restore the backup taken before the upgrade instead" in str(refused.value)
    assert "one_study_per_sop_instance_per_hospital" not in _index_definitions()
    Study.objects.all().delete()  # the latest schema again, for the tests after this one
