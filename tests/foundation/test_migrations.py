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
