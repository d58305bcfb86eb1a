"""Audit events are append-only in the database too, on PostgreSQL: a trigger refuses
UPDATE and DELETE whoever issues them (raw SQL, another client, a bug). TRUNCATE is
left to the operator (and to test teardown). SQLite keeps the ORM guards only."""

from django.db import migrations

CREATE = [
    """
CREATE OR REPLACE FUNCTION pleura_audit_event_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'hospital_auditevent is append-only: ' || TG_OP || ' refused',
        ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
""",
    "DROP TRIGGER IF EXISTS hospital_auditevent_append_only ON hospital_auditevent",
    """
CREATE TRIGGER hospital_auditevent_append_only
    BEFORE UPDATE OR DELETE ON hospital_auditevent
    FOR EACH ROW EXECUTE FUNCTION pleura_audit_event_append_only()
""",
]

DROP = [
    "DROP TRIGGER IF EXISTS hospital_auditevent_append_only ON hospital_auditevent",
    "DROP FUNCTION IF EXISTS pleura_audit_event_append_only()",
]


def _install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in CREATE:
            schema_editor.execute(statement)


def _remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in DROP:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("hospital", "0001_initial")]

    operations = [migrations.RunPython(_install, _remove, elidable=False)]
