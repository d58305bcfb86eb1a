from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from hospital import audit
from mlcore import registry
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Make a model version the active one. A candidate must measure at least as well as the active "
        "version (AUC, sensitivity, specificity) in a comparison with it; --rollback re-activates an earlier version."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="model version name")
        parser.add_argument(
            "--rollback", action="store_true", help="re-activate a retired (earlier) version (superusers only)"
        )
        parser.add_argument("--override", action="store_true", help="promote despite the gate (superusers only)")
        parser.add_argument(
            "--actor", default=None, help="email of the person promoting (required with --override and --rollback)"
        )
        parser.add_argument("--reason", default="", help="why; recorded in the audit trail")

    def handle(self, *args, **options):
        version = ModelVersion.objects.filter(name=options["name"]).first()
        if version is None:
            raise CommandError(f"no model version named {options['name']!r}")
        if version.status == ModelVersion.Status.ACTIVE:
            raise CommandError(f"{version.name} is already the active version")
        try:
            actor = self._actor(options)
        except _BypassRefused as refused:
            # Someone tried to skip the gate and was not allowed: kept in the trail, as a
            # refusal by the gate is (learning-loop review: three such tries left nothing).
            audit.record(
                audit.Action.MODEL_PROMOTION_REFUSED,
                actor=refused.user,
                target=version,
                outcome=audit.Outcome.DENIED,
                name=version.name,
                failures=[str(refused)],
            )
            # As a plain CommandError: Django prints the class's name, "_BypassRefused: ..."
            # (fresh-machine review).
            raise CommandError(str(refused)) from None
        try:
            if options["rollback"]:
                if version.status != ModelVersion.Status.RETIRED:
                    raise CommandError(f"{version.name} was never active; promote it instead of rolling back")
                version = registry.activate(
                    version,
                    actor=actor,
                    action=audit.Action.MODEL_ROLLED_BACK,
                    from_status=ModelVersion.Status.RETIRED,
                    reason=options["reason"],
                )
                self.stdout.write(f"rolled back to {version.name}")
                return
            version = registry.activate(
                version, actor=actor, gated=True, override=options["override"], reason=options["reason"]
            )
        except registry.PromotionRefused as exc:
            audit.record(
                audit.Action.MODEL_PROMOTION_REFUSED,
                actor=actor,
                target=version,
                outcome=audit.Outcome.DENIED,
                name=version.name,
                failures=exc.failures,
            )
            raise CommandError(f"{version.name} was not promoted: {exc}") from exc
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"promoted {version.name}")

    def _actor(self, options):
        # A rollback skips the gate as an override does: a version the gate had refused,
        # once overridden and rolled back from, came back to doctors with no one named and
        # no reason (learning-loop review). Both need a superuser and a reason.
        bypass = "--override" if options["override"] else "--rollback" if options["rollback"] else ""
        if not options["actor"]:
            if bypass:
                raise _BypassRefused(f"{bypass} needs --actor EMAIL of a superuser")
            return None
        user = get_user_model().objects.filter(email=options["actor"].lower(), is_active=True).first()
        if user is None:
            if bypass:
                raise _BypassRefused(f"no active user {options['actor']!r}")
            raise CommandError(f"no active user {options['actor']!r}")
        if bypass and not user.is_superuser:
            raise _BypassRefused(f"only a superuser may {bypass.lstrip('-')}: it skips the promotion gate", user)
        if bypass and not options["reason"].strip():
            raise _BypassRefused(f"{bypass} needs --reason: why the gate is skipped, for the audit trail", user)
        return user


class _BypassRefused(CommandError):
    """A try to skip the promotion gate (--override, --rollback) that is not allowed."""

    def __init__(self, message: str, user=None):
        super().__init__(message)
        self.user = user
