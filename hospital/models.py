from __future__ import annotations

import hashlib
import secrets
import uuid
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models, router
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone


def default_time_zone() -> str:
    return settings.TIME_ZONE


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone name (such as Europe/London).")


class Hospital(models.Model):
    """The tenant. Every tenant-owned row carries a non-null foreign key to one."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=60, unique=True)
    is_active = models.BooleanField(default=True)
    # Consent for this hospital's reviewed studies to train models served to all
    # hospitals. Off unless a hospital admin turns it on (audited).
    shares_reviews_for_training = models.BooleanField(default=False)
    # Where its staff work: pages show times, and date filters cut days, in this zone
    # (stored times stay UTC). A study received at 22:30 in New York is on the 23rd there.
    time_zone = models.CharField(
        max_length=64,
        default=default_time_zone,
        validators=[validate_time_zone],
        help_text="IANA time zone of the hospital, e.g. Europe/London or America/New_York.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    DOCTOR = "doctor", "Doctor"
    RADIOLOGIST = "radiologist", "Radiologist"
    HOSPITAL_ADMIN = "hospital_admin", "Hospital admin"


class MembershipQuerySet(models.QuerySet):
    def active(self) -> MembershipQuerySet:
        return self.filter(is_active=True, hospital__is_active=True, user__is_active=True)


class Membership(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["hospital__name", "user__email"]
        constraints = [
            models.UniqueConstraint(fields=["user", "hospital"], name="one_membership_per_user_and_hospital")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.hospital} ({self.get_role_display()})"


KEY_PREFIX = "plr_"


def hash_api_key(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing
    # to brute-force, and every API request pays for this lookup.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class IntegrationKeyQuerySet(models.QuerySet):
    def usable(self) -> IntegrationKeyQuerySet:
        # Now() is the database's clock when the query runs, so the lookup compiled once
        # (_UsableKeyLookup) still refuses a key the moment it expires.
        not_expired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=Now())
        return self.filter(not_expired, revoked_at__isnull=True, hospital__is_active=True)


class IntegrationKey(models.Model):
    """An EMR system's credential for one hospital. Only its hash is stored."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="integration_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # A hospital's rule for how long a credential lives (EMR review: keys lived until revoked).
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Refused from this moment on; empty: until revoked."
    )

    objects = IntegrationKeyQuerySet.as_manager()

    class Meta:
        ordering = ["hospital__name", "name"]
        constraints = [models.UniqueConstraint(fields=["hospital", "name"], name="unique_key_name_per_hospital")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def set_new_secret(self) -> str:
        """Give this (unsaved) key a fresh secret and return its raw value, which is never stored."""
        raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw_key[: len(KEY_PREFIX) + 8]
        self.key_hash = hash_api_key(raw_key)
        return raw_key

    @classmethod
    def generate(cls, *, hospital: Hospital, name: str, created_by=None) -> tuple[IntegrationKey, str]:
        """Create a key and return it with its raw value (no audit: see hospital.services)."""
        key = cls(hospital=hospital, name=name, created_by=created_by)
        raw_key = key.set_new_secret()
        key.save()
        return key, raw_key

    def revoke(self) -> None:
        IntegrationKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])

    @classmethod
    def find_usable(cls, raw_key: str) -> IntegrationKey | None:
        """The usable key (not revoked, of an active hospital) whose secret is `raw_key`,
        with its hospital loaded; None if there is none."""
        return _usable_key_lookup.find(hash_api_key(raw_key))


class _UsableKeyLookup:
    """`IntegrationKey.objects.usable().select_related("hospital").get(key_hash=...)`,
    built and compiled by the ORM once per database, then run on a cursor.

    Every API request starts with this lookup. Through the ORM it cost 670-890 us of CPU
    a request, nearly all of it building and compiling the query; compiled once, 140-190
    us. A whole upload went from 4.6-4.8 to 3.7-3.9 ms of CPU (one process on PostgreSQL,
    alternated blocks; docs/benchmarks.md, eleventh stop). The rows become models
    through `Model.from_db` after the database's converters, as the ORM loads them; a
    test compares every field with the ORM's on each backend.
    """

    _HASH_PARAMETER = "key-hash-parameter"

    def __init__(self):
        self._compiled: dict[tuple[str, str], _CompiledKeyLookup] = {}

    def find(self, key_hash: str) -> IntegrationKey | None:
        alias = router.db_for_read(IntegrationKey)
        connection = connections[alias]
        compiled = self._compiled_for(alias, connection)
        params = list(compiled.params)
        params[compiled.hash_position] = key_hash
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        # strict: a column more or less than the two models' fields is an error, not a shift.
        values = [_converted(value, *column, connection) for value, column in zip(row, compiled.columns, strict=True)]
        split = len(compiled.key_names)
        key = IntegrationKey.from_db(alias, compiled.key_names, values[:split])
        key.hospital = Hospital.from_db(alias, compiled.hospital_names, values[split:])
        return key

    def _compiled_for(self, alias: str, connection) -> _CompiledKeyLookup:
        compiled = self._compiled.get((alias, connection.vendor))
        if compiled is None:
            query = (
                IntegrationKey.objects.usable()
                .select_related("hospital")
                .filter(key_hash=self._HASH_PARAMETER)
                .order_by()  # key_hash is unique
                .query
            )
            sql, params = query.get_compiler(using=alias).as_sql()
            if list(params).count(self._HASH_PARAMETER) != 1:
                raise AssertionError(f"the integration key lookup has no single place for the hash: {sql}")
            # select_related selects the key's concrete fields, then its hospital's.
            key_fields, hospital_fields = IntegrationKey._meta.concrete_fields, Hospital._meta.concrete_fields
            compiled = self._compiled[(alias, connection.vendor)] = _CompiledKeyLookup(
                sql=sql,
                params=tuple(params),
                hash_position=list(params).index(self._HASH_PARAMETER),
                columns=[_column_and_converters(field, connection) for field in (*key_fields, *hospital_fields)],
                key_names=[field.attname for field in key_fields],
                hospital_names=[field.attname for field in hospital_fields],
            )
        return compiled


@dataclass(frozen=True)
class _CompiledKeyLookup:
    sql: str
    params: tuple
    hash_position: int
    columns: list[tuple]  # (column, its converters), in the order selected
    key_names: list[str]
    hospital_names: list[str]


def _column_and_converters(field, connection) -> tuple:
    """What the ORM applies to a value of `field` read from `connection` (SQLite returns
    UUIDs and datetimes as text, for example)."""
    column = field.get_col(field.model._meta.db_table)
    return column, connection.ops.get_db_converters(column) + column.get_db_converters(connection)


def _converted(value, column, converters, connection):
    for converter in converters:
        value = converter(value, column, connection)
    return value


_usable_key_lookup = _UsableKeyLookup()


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete an audit event."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit events cannot be changed.")

    def delete(self):
        raise AppendOnlyError("Audit events cannot be deleted.")

    def for_hospital(self, hospital: Hospital) -> AuditEventQuerySet:
        return self.filter(hospital=hospital)

    def about_study(self, code: str) -> AuditEventQuerySet:
        """Events of the study with this code, and the lists that showed it among others
        (their `studies`). On PostgreSQL the codes are matched whole, as JSON, which a GIN
        index of list events serves (hospital migration 0005): a text match read every
        list event of the hospital, 9 to 10 s over 3 million events (scale review)."""
        if connections[self.db].vendor == "postgresql":
            listed = Q(detail__studies__contains=[code])
        else:  # SQLite has no JSON containment; the codes are UUIDs, so a text match is exact
            listed = Q(detail__studies__icontains=code)
        return self.filter(Q(target_type="study", target_id=code) | Q(listed, action="study.listed"))


class AuditEvent(models.Model):
    """Who did what, to which object, from where. Append-only; no PHI in `detail`."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        DENIED = "denied", "Denied"

    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor_key = models.ForeignKey(IntegrationKey, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["hospital", "-created_at"]),
            # "Who opened this study?" (AuditEventQuerySet.about_study); the lists are
            # matched by a GIN index that PostgreSQL alone has (migration 0005).
            models.Index(
                fields=["hospital", "target_type", "target_id"], condition=~Q(target_id=""), name="audit_event_target"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.outcome}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise AppendOnlyError("Audit events cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events cannot be deleted.")
