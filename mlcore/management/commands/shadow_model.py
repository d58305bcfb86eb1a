from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from mlcore import retraining
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Run a candidate model silently beside the active one on new studies (--on), or stop (--off). "
        "Shadow predictions are stored for the performance page and never shown to doctors."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="candidate model version name")
        switch = parser.add_mutually_exclusive_group(required=True)
        switch.add_argument("--on", action="store_true")
        switch.add_argument("--off", action="store_true")
        parser.add_argument("--actor", default=None, help="email of the person switching (audit)")

    def handle(self, *args, **options):
        version = ModelVersion.objects.filter(name=options["name"]).first()
        if version is None:
            raise CommandError(f"no model version named {options['name']!r}")
        actor = None
        if options["actor"]:
            actor = get_user_model().objects.filter(email=options["actor"].lower(), is_active=True).first()
            if actor is None:
                raise CommandError(f"no active user {options['actor']!r}")
        try:
            changed = retraining.set_shadow(version, options["on"], actor=actor)
        except retraining.ShadowError as exc:
            raise CommandError(str(exc)) from exc
        state = "on" if options["on"] else "off"
        self.stdout.write(f"shadow mode {state} for {version.name}" + ("" if changed else " (unchanged)"))
