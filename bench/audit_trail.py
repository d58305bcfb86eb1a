"""How fast a large hospital's audit trail answers its questions, on PostgreSQL.

    python -m bench.audit_trail --database-url postgresql://postgres@127.0.0.1:5432/bench_audit \
        [--events 1000000] [--studies 50000] [--repeats 5] [--write]

The named database must be empty: it is migrated, then filled in bulk with one hospital's
trail: `--events` events, 80% of them list events naming 25 studies each (a worklist page,
an EMR's feed) and 20% study views, over `--studies` study codes and 365 days. Then, as
the hospital's admin through Django's test client, it times the pages an admin asks of
it: the audit log unfiltered, by one study's code ("who saw this study?"), by one day,
and the admin's event list. Each is asked `--repeats` times after a first, untimed
request; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"


def _fill(connection, hospital_id: int, events: int, studies: int) -> str:
    """Fill the trail in bulk, its indexes dropped meanwhile and built again after, as a
    bulk load is done."""
    listed = events * 4 // 5
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'hospital_auditevent' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute(
            "CREATE TEMP TABLE bench_codes AS SELECT n - 1 AS n, gen_random_uuid()::text AS code "
            "FROM generate_series(1, %s) n",
            [studies],
        )
        # Each list names 25 consecutive codes of the pool, from a place that moves with the
        # event: every code is named by about as many lists as any other. The lists are
        # made once for each place, then joined.
        cursor.execute(
            """
            CREATE TEMP TABLE bench_lists AS
            SELECT start, jsonb_build_object('count', 25, 'studies', jsonb_agg(code ORDER BY i)) AS detail
            FROM generate_series(0, %(studies)s - 1) start CROSS JOIN generate_series(0, 24) i
            JOIN bench_codes ON n = (start + i) %% %(studies)s
            GROUP BY start
            """,
            {"studies": studies},
        )
        cursor.execute("CREATE UNIQUE INDEX ON bench_lists (start)")
        cursor.execute("CREATE UNIQUE INDEX ON bench_codes (n)")
        cursor.execute(
            """
            INSERT INTO hospital_auditevent (created_at, hospital_id, action, target_type, target_id, outcome, detail)
            SELECT now() - (g * interval '365 days') / %(listed)s, %(hospital)s, 'study.listed', '', '', 'success',
                   detail
            FROM generate_series(1, %(listed)s) g JOIN bench_lists ON start = (g * 25) %% %(studies)s
            """,
            {"listed": listed, "hospital": hospital_id, "studies": studies},
        )
        cursor.execute(
            """
            INSERT INTO hospital_auditevent (created_at, hospital_id, action, target_type, target_id, outcome, detail)
            SELECT now() - (g * interval '365 days') / %(viewed)s, %(hospital)s, 'study.viewed', 'study', code,
                   'success', '{}'::jsonb
            FROM generate_series(1, %(viewed)s) g JOIN bench_codes ON n = g %% %(studies)s
            """,
            {"viewed": events - listed, "hospital": hospital_id, "studies": studies},
        )
        cursor.execute("SELECT code FROM bench_codes WHERE n = 0")
        (code,) = cursor.fetchone()
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("ANALYZE hospital_auditevent")
    return code


def _events_about(connection, code: str) -> int:
    # In SQL, not through the product's code: the same count for any version measured.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM hospital_auditevent "
            "WHERE target_id = %s OR (detail -> 'studies') @> to_jsonb(%s::text)",
            [code, code],
        )
        return cursor.fetchone()[0]


def _timed(client, path: str, repeats: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(path)  # untimed: the process's first request of this page
    seconds = []
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - started)
    return {"status": response.status_code, "median_s": round(statistics.median(seconds), 4),
            "max_s": round(max(seconds), 4), "queries": len(queries.captured_queries)}  # fmt: skip


def render_section(result: dict, command: str) -> str:
    lines = [
        "## The audit trail of a large hospital, on PostgreSQL (bench/audit_trail.py)",
        "",
        f"`{command}`: {result['events']:,} events of one hospital ({result['listed']:,} list events naming 25 of "
        f"{result['studies']:,} studies each, the rest study views), filled and indexed in {result['fill_s']} s. "
        f"Median of {result['repeats']} requests as the hospital's admin, through Django's test client, after one "
        "untimed.",
        "",
        "| page | status | median | slowest | queries |",
        "|---|---|---|---|---|",
    ]
    for name, timing in result["pages"].items():
        lines.append(
            f"| {name} | {timing['status']} | {timing['median_s']} s | {timing['max_s']} s | {timing['queries']} |"
        )
    lines += ["", f"The study asked about was named by {result['about_the_study']} events."]
    return "\n".join(lines)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database, migrated and filled")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--studies", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record the figures in docs/benchmarks.md")
    args = parser.parse_args()

    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from accounts.models import User
    from hospital.models import AuditEvent, Hospital, Membership, Role

    if connection.vendor != "postgresql":
        raise SystemExit("The benchmark measures PostgreSQL's plans: give it a PostgreSQL database.")
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    if AuditEvent.objects.exists():
        raise SystemExit("The database holds events already: give the benchmark an empty one.")
    hospital = Hospital.objects.create(name="Bench General", slug="bench-general")
    admin = User.objects.create_user(email="admin@bench.example", password="bench-password-0", is_staff=True)
    Membership.objects.create(user=admin, hospital=hospital, role=Role.HOSPITAL_ADMIN)

    started = time.perf_counter()
    code = _fill(connection, hospital.pk, args.events, args.studies)
    fill_seconds = round(time.perf_counter() - started, 1)
    client = Client()
    client.force_login(admin)
    now = timezone.localtime()
    day = (now.date() - timedelta(days=100)).isoformat()
    week_ago = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=7)
    pages = {
        "audit log, unfiltered": "/hospital/audit/",
        "audit log, one study's code": f"/hospital/audit/?study={code}",
        "audit log, one day": f"/hospital/audit/?date_from={day}&date_to={day}",
        "audit log, one study's code and action 'Studies listed'": f"/hospital/audit/?study={code}&action=study.listed",
        "admin's event list": "/admin/hospital/auditevent/",
        # As the admin's "Past 7 days" link asks it: from a local midnight.
        "admin's event list, last 7 days": "/admin/hospital/auditevent/?"
        + urlencode({"created_at__gte": str(week_ago)}),
    }
    result = {
        "events": args.events,
        "listed": args.events * 4 // 5,
        "studies": args.studies,
        "repeats": args.repeats,
        "fill_s": fill_seconds,
        "about_the_study": _events_about(connection, code),
        "pages": {name: _timed(client, path, args.repeats) for name, path in pages.items()},
    }
    print(json.dumps(result, indent=2))
    if args.write:
        from bench.inference import write_section

        command = (
            f"python -m bench.audit_trail --database-url postgresql://…/EMPTY --events {args.events} "
            f"--studies {args.studies} --repeats {args.repeats} --write"
        )
        write_section(DOC, "audit-trail:postgresql", render_section(result, command))
    return result


if __name__ == "__main__":
    main()
