"""Migration operations that build an index without stopping writes to a large table.

A plain CREATE INDEX holds a lock that makes every insert and update of the table wait
until the index is built: on `diagnostics_study` that is every upload, claim and result
for as long as the build takes (code review: a write waited on 0008's index until its
lock timeout). CREATE INDEX CONCURRENTLY lets them go on, but cannot run in a
transaction, so a migration using these sets `atomic = False`, and holds nothing else:
its other operations would be committed one by one before a build that may still fail. A
build that failed (cancelled by a timeout, or a deploy stopped) leaves its index INVALID
under its name, and the next run drops that leftover before building again (diff review:
`migrate` could not be run twice). SQLite (`make run`, the tests) has no such statement
and gets the plain one.
"""

from __future__ import annotations

from django.contrib.postgres.operations import AddIndexConcurrently
from django.core.management.base import CommandError
from django.db import IntegrityError, migrations
from django.db.migrations.operations import AddIndex


def _drop_invalid_leftover(schema_editor, name: str) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = pg_index.indexrelid "
            "WHERE pg_class.relname = %s AND NOT pg_index.indisvalid",
            [name],
        )
        leftover = cursor.fetchone() is not None
    if leftover:
        _drop_index_concurrently(schema_editor, name)


def _drop_index_concurrently(schema_editor, name: str) -> None:
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}")


def _build_constraint_concurrently(operation, app_label, schema_editor, state, constraint) -> None:
    model = state.apps.get_model(app_label, operation.model_name)
    if not operation.allow_migrate_model(schema_editor.connection.alias, model):
        return
    _drop_invalid_leftover(schema_editor, constraint.name)
    statement = str(constraint.create_sql(model, schema_editor))
    # IF NOT EXISTS: a valid index of the name is the one a run before built.
    statement = statement.replace("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS", 1)
    try:
        schema_editor.execute(statement)
    except IntegrityError as exc:
        _drop_invalid_leftover(schema_editor, constraint.name)
        # manage.py prints a CommandError's words, not a traceback (operator review).
        raise CommandError(
            f"The rule {constraint.name} cannot be built: the table holds rows it forbids ({exc.__cause__ or exc}). "
            "Migrating back past a release that allowed them loses data: restore the backup taken before the "
            "upgrade instead (deploy/README, Upgrade and rollback)."
        ) from exc


def _drop_constraint_concurrently(operation, app_label, schema_editor, state, name: str) -> None:
    model = state.apps.get_model(app_label, operation.model_name)
    if operation.allow_migrate_model(schema_editor.connection.alias, model):
        _drop_index_concurrently(schema_editor, name)


class AddIndexConcurrentlyOnPostgreSQL(AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            _drop_invalid_leftover(schema_editor, self.index.name)
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
        _build_constraint_concurrently(self, app_label, schema_editor, to_state, self.constraint)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        _drop_constraint_concurrently(self, app_label, schema_editor, from_state, self.constraint.name)


class RemoveConstraintConcurrentlyOnPostgreSQL(migrations.RemoveConstraint):
    """A conditional unique constraint dropped concurrently, and built again concurrently
    when the migration is reversed: reversed, a plain RemoveConstraint builds the index
    with the lock every upload waits on (diff review)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        _drop_constraint_concurrently(self, app_label, schema_editor, from_state, self.name)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model_state = to_state.models[app_label, self.model_name_lower]
        constraint = model_state.get_constraint_by_name(self.name)
        _build_constraint_concurrently(self, app_label, schema_editor, to_state, constraint)


class AddIndexConcurrentlyOnPostgreSQLOnly(migrations.operations.base.Operation):
    """An index of a kind only PostgreSQL has (GIN over a JSON expression), built
    concurrently there. Not in any model's state: SQLite, which has no such index, gets
    none, and the queries it serves run there without it."""

    reversible = True

    def __init__(self, name: str, table: str, definition: str):
        self.name, self.table, self.definition = name, table, definition

    def deconstruct(self):
        return self.__class__.__name__, [], {"name": self.name, "table": self.table, "definition": self.definition}

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        _drop_invalid_leftover(schema_editor, self.name)
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(self.name)} ON {quote(self.table)} {self.definition}"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            _drop_index_concurrently(schema_editor, self.name)

    def describe(self):
        return f"Create index {self.name} concurrently, on PostgreSQL only"
