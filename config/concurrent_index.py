"""Migration operations that build an index without stopping writes to a large table.

A plain CREATE INDEX holds a lock that makes every insert and update of the table wait
until the index is built: on `diagnostics_study` that is every upload, claim and result
for as long as the build takes (code review: a write waited on 0008's index until its
lock timeout). CREATE INDEX CONCURRENTLY lets them go on, but cannot run in a
transaction, so a migration using these sets `atomic = False`. SQLite (`make run`, the
tests) has no such statement and gets the plain one.
"""

from __future__ import annotations

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyOnPostgreSQL(AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class AddConstraintConcurrentlyOnPostgreSQL(migrations.AddConstraint):
    """A conditional unique constraint, which PostgreSQL keeps as a partial unique index,
    built concurrently; the same constraint as AddConstraint, dropped as it would be."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        statement = self.constraint.create_sql(model, schema_editor)
        schema_editor.execute(str(statement).replace("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY", 1))
