"""Writing several new rows as one.

`insert_together(study, event)` stores new model instances all or none. On PostgreSQL
that is a single statement, each INSERT a data-modifying WITH of one SELECT, so it is
one round trip to the server, where `transaction.atomic()` around two saves is four
(BEGIN, two INSERTs, COMMIT). An upload stores its study and its audit event this way:
on the 2-core VM, with PostgreSQL sharing the web core, that took 8% off the core's time
per upload (docs/benchmarks.md, sixteenth stop). Elsewhere (SQLite for `make run`) the
saves run in one transaction.
"""

from __future__ import annotations

from contextlib import nullcontext

from django.db import connections, transaction
from django.db.models import Model
from django.db.models.sql import InsertQuery


def insert_together(*instances: Model, using: str = "default") -> None:
    """Insert these unsaved instances (each with an automatic primary key), all or none,
    and give each its primary key. Raises what the database raises (IntegrityError)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        with transaction.atomic(using=using):
            for instance in instances:
                instance.save(force_insert=True, using=using)
        return
    inserts = [_insert_sql(instance, using) for instance in instances]
    # Only Django's compiled INSERTs and numbered names go into the text; values are params.
    statement = "WITH {} SELECT {}".format(
        ", ".join(f"new_{number} AS ({sql})" for number, (sql, _) in enumerate(inserts)),
        ", ".join(f"(SELECT * FROM new_{number})" for number in range(len(inserts))),  # noqa: S608
    )
    params = [param for _, insert_params in inserts for param in insert_params]
    # Inside a transaction (a caller's atomic block, a test) a savepoint keeps a failed
    # statement from spoiling it; outside one the statement commits by itself.
    inside = transaction.atomic(using=using) if connection.in_atomic_block else nullcontext()
    with inside, connection.cursor() as cursor:
        cursor.execute(statement, params)
        keys = cursor.fetchone()
    for instance, key in zip(instances, keys, strict=True):
        instance.pk = key
        instance._state.adding = False
        instance._state.db = using


def _insert_sql(instance: Model, using: str) -> tuple[str, tuple]:
    """`INSERT ... RETURNING <pk>` for one unsaved instance, as Model.save() would write it
    (field defaults and pre_save, such as auto_now, included)."""
    meta = instance._meta
    fields = [field for field in meta.local_concrete_fields if field is not meta.auto_field and not field.generated]
    query = InsertQuery(type(instance))
    query.insert_values(fields, [instance])
    compiler = query.get_compiler(using=using)
    compiler.returning_fields = [meta.pk]
    [(sql, params)] = compiler.as_sql()
    return sql, tuple(params)
