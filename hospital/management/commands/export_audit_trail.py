from __future__ import annotations

import argparse
import csv
import json
import os
import zoneinfo
from datetime import UTC, date

from django.core.management.base import BaseCommand, CommandError

from hospital import audit
from hospital.days import within_days
from hospital.management.commands._helpers import hospital_by_slug, superuser_by_email
from hospital.models import AuditEvent

COLUMNS = ("time_utc", "action", "outcome", "actor", "actor_key", "target_type", "target_id", "client_ip", "detail")


class Command(BaseCommand):
    help = (
        "Write one hospital's audit trail, oldest first, to a new CSV file readable by its owner only, for "
        "an archive or an inquiry. Times are UTC; --since and --until are days in the hospital's time zone, "
        "both included. The export is itself recorded in the trail."
    )

    def add_arguments(self, parser):
        parser.add_argument("--hospital", required=True, help="The hospital's slug.")
        parser.add_argument("--out", required=True, help="A file that does not exist yet.")
        parser.add_argument("--since", type=_day, help="First day (YYYY-MM-DD).")
        parser.add_argument("--until", type=_day, help="Last day (YYYY-MM-DD).")
        parser.add_argument("--actor", required=True, help="Email of the superuser exporting it, for the trail.")

    def handle(self, *args, hospital: str, out: str, since, until, actor: str, **options):
        operator = superuser_by_email(actor)
        target = hospital_by_slug(hospital, deactivated_too=True)  # a hospital that left: its archive
        if since and until and since > until:
            raise CommandError("--until is before --since.")
        events = AuditEvent.objects.for_hospital(target).select_related("actor_user", "actor_key").order_by("id")
        # Days as the hospital's pages show them (its own time zone), the last one whole.
        events = within_days(events, since, until, zone=zoneinfo.ZoneInfo(target.time_zone))
        if os.path.lexists(out):
            raise CommandError(f"{out} exists already: name a new file.")
        # Written beside it, then linked to its name only when whole: an export that failed
        # half way left a file that the next run refused to replace (operator review).
        partial = f"{out}.partial-{os.getpid()}"
        try:
            # Owner-only from its creation: who worked when, and from where, is personal data.
            handle = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", newline="")
        except OSError as exc:
            raise CommandError(f"{out} cannot be written: {exc.strerror}.") from exc
        try:
            with handle:
                count = _write(handle, events)
            os.link(partial, out)
        except FileExistsError as exc:
            raise CommandError(f"{out} exists already: name a new file.") from exc
        finally:
            os.unlink(partial)
        audit.record(
            audit.Action.AUDIT_VIEWED, actor=operator, hospital=target, exported=count,
            since=since.isoformat() if since else "", until=until.isoformat() if until else "",
        )  # fmt: skip
        self.stdout.write(f"Wrote {count} event(s) of {target.name} to {out}.")


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day: write it YYYY-MM-DD.") from exc


def _write(handle, events) -> int:
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    count = 0
    for event in events.iterator(chunk_size=2000):
        writer.writerow([_cell(value) for value in _row(event)])
        count += 1
    return count


def _cell(value: str) -> str:
    """A value a spreadsheet would read as a formula (an admin's key named "=HYPERLINK(...)")
    is written as text, by a leading apostrophe (operator review)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _row(event: AuditEvent) -> list[str]:
    return [
        event.created_at.astimezone(UTC).isoformat(),
        event.action,
        event.outcome,
        event.actor_user.email if event.actor_user else "",
        f"{event.actor_key.name} ({event.actor_key.prefix})" if event.actor_key else "",
        event.target_type,
        event.target_id,
        event.client_ip or "",
        json.dumps(event.detail, sort_keys=True, ensure_ascii=False),
    ]
