"""The Django admin, scoped per hospital.

A hospital admin (an active `hospital_admin` membership; `is_staff` follows that role)
sees and changes rows of the hospitals they administer, nothing else. Platform
superusers see everything. Permissions come from the membership role, not from
Django's model permissions, so no group or permission row can widen them.

Other apps register their tenant-owned models with `HospitalScopedAdmin`:

    @admin.register(Study)
    class StudyAdmin(HospitalScopedAdmin):
        hospital_admin_permissions = frozenset({"view"})
        list_display = [...]

Foreign-key choices are scoped by `formfield_for_foreignkey`; do not add
`raw_id_fields` or `autocomplete_fields` to tenant-owned relations, whose lookup
pages are not scoped.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import widgets
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.db import transaction
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone

from hospital import audit, services
from hospital.models import AuditEvent, Hospital, IntegrationKey, Membership, Role
from hospital.tenancy import NotInThisHospital, admin_hospitals, for_hospitals

VIEW, ADD, CHANGE, DELETE = "view", "add", "change", "delete"


class ReadableLookupsMixin:
    """A list's address or action that names what no row can hold is refused as Django
    refuses an unknown filter (its `?e=1` page, a message), not with a 500: a NUL in a
    filter or search (PostgreSQL refuses it in a query), a year of 99999 or a day past
    9999-12-31, a selected id that is not one (bad-input review)."""

    def get_changelist_instance(self, request):
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            raise IncorrectLookupParameters("A NUL character in the list's address.")
        try:
            return super().get_changelist_instance(request)
        except (ValueError, OverflowError) as exc:  # dates out of range, raised building the query
            raise IncorrectLookupParameters(str(exc)) from exc

    def lookup_allowed(self, lookup, value, request=None):
        """Only the list's own filters and date drill-down in its address. Django accepts a
        lookup on any of a model's own fields: `?patient_id=MRN-…` found a patient in any
        hospital for a platform operator, a character at a time with `__startswith` (and
        `?key_hash__startswith=` a key's hash), and left the value in URLs and logs (admin
        review). Refused, Django answers 400."""
        for related in self.model._meta.related_fkey_lookups:  # a raw-id widget's popup
            related = related() if callable(related) else related
            if (lookup, value) in widgets.url_params_from_lookup_dict(related).items():
                return True
        filters = self.get_list_filter(request) if request is not None else self.list_filter
        named = {item if isinstance(item, str) else item[0] for item in filters if isinstance(item, str | tuple)}
        named |= {item.parameter_name for item in filters if isinstance(item, type)}
        if self.date_hierarchy:
            named.add(self.date_hierarchy.split(LOOKUP_SEP)[0])
        if lookup.split(LOOKUP_SEP)[0] not in named:
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_search_results(self, request, queryset, search_term):
        # The autocomplete's search comes here too (with its term), not through the list.
        if "\x00" in search_term:
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)

    def response_action(self, request, queryset):
        try:
            for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
                self.model._meta.pk.to_python(value)
        except ValidationError:
            self.message_user(request, "The items selected are not rows of this list: nothing done.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)


class HospitalScopedAdmin(ReadableLookupsMixin, admin.ModelAdmin):
    """Base admin for tenant-owned models.

    - `hospital_lookup`: the path from the model to its Hospital (`"hospital"`,
      `"study__hospital"`, `"memberships__hospital"`, `"pk"` for Hospital itself).
    - `hospital_admin_permissions` / `superuser_permissions`: what each may do.
      Delete is off by default: deactivate or revoke instead, the audit trail
      references these rows.
    """

    hospital_lookup = "hospital"
    hospital_admin_permissions: frozenset[str] = frozenset({VIEW, ADD, CHANGE})
    superuser_permissions: frozenset[str] = frozenset({VIEW, ADD, CHANGE})

    # -- scope ---------------------------------------------------------------
    def admin_hospitals(self, request):
        """Hospitals the signed-in user administers (their ids cached on the request)."""
        return Hospital.objects.filter(pk__in=self.admin_hospital_ids(request))

    def admin_hospital_ids(self, request) -> list[int]:
        if not hasattr(request, "_pleura_admin_hospital_ids"):
            request._pleura_admin_hospital_ids = list(admin_hospitals(request.user).values_list("pk", flat=True))
        return request._pleura_admin_hospital_ids

    def administers(self, request, hospital_id: int) -> bool:
        """Whether the signed-in user is an admin of that hospital (a platform operator
        may also be one)."""
        return hospital_id in self.admin_hospital_ids(request)

    def is_platform_admin(self, request) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def deactivate_keeping_an_admin(self, request, items, deactivate, losing, *, noun: str) -> None:
        """A bulk deactivation: `deactivate(item, actor=, request=)` each item in turn,
        each checked against what the previous ones left, except one that would leave a
        hospital without an active hospital admin (`losing(item)`: the arguments of
        `services.hospitals_left_without_admin`; a platform operator is not held to it).
        Says how many `noun` were deactivated, and which hospitals kept their admin."""
        count, kept = 0, []
        for item in items:
            # One transaction: the check locks the hospitals concerned until the change is made.
            with transaction.atomic():
                if not self.is_platform_admin(request):
                    left_without = services.hospitals_left_without_admin(**losing(item))
                    if left_without:
                        kept.extend(left_without)
                        continue
                count += deactivate(item, actor=request.user, request=request)
        self.message_user(request, f"{count} {noun} deactivated.", messages.SUCCESS)
        if kept:
            self.message_user(request, services.left_without_admin_message(kept), messages.WARNING)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if self.is_platform_admin(request):
            return queryset
        return for_hospitals(queryset, self.admin_hospital_ids(request), self.hospital_lookup)

    def in_scope(self, request, obj) -> bool:
        return self.is_platform_admin(request) or self.get_queryset(request).filter(pk=obj.pk).exists()

    def check_hospital(self, request, hospital: Hospital | None) -> None:
        """Defence in depth on save: the form already limits the choices."""
        if self.is_platform_admin(request):
            return
        if hospital is None or not self.admin_hospitals(request).filter(pk=hospital.pk).exists():
            raise PermissionDenied("You can only manage your own hospital.")

    # -- permissions ---------------------------------------------------------
    def allowed(self, request, permission: str, obj=None) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if user.is_superuser:
            return permission in self.superuser_permissions
        if permission not in self.hospital_admin_permissions:
            return False
        if not self.admin_hospitals(request).exists():
            return False
        return obj is None or self.in_scope(request, obj)

    def has_module_permission(self, request) -> bool:
        return self.allowed(request, VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return self.allowed(request, VIEW, obj) or self.allowed(request, CHANGE, obj)

    def has_add_permission(self, request) -> bool:
        return self.allowed(request, ADD)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.allowed(request, CHANGE, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.allowed(request, DELETE, obj)

    # -- forms and lists -----------------------------------------------------
    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Hospital and not self.is_platform_admin(request):
            kwargs["queryset"] = self.admin_hospitals(request)
            if len(ids := self.admin_hospital_ids(request)) == 1:  # the admin of one hospital has nothing to choose
                kwargs["initial"] = ids[0]
        elif db_field.related_model is Hospital:
            kwargs["queryset"] = Hospital.objects.filter(is_active=True)
        elif db_field.related_model._meta.label == "accounts.User" and not self.is_platform_admin(request):
            kwargs["queryset"] = self.scoped_users(request)
        elif _is_tenant_owned(db_field.related_model) and not self.is_platform_admin(request):
            # e.g. a study's integration key: only rows of the admin's hospitals.
            related = db_field.related_model._default_manager
            kwargs["queryset"] = related.filter(hospital__in=self.admin_hospitals(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def scoped_users(self, request):
        """Users a hospital admin may pick: members of their hospitals, never superusers."""
        from accounts.models import User

        return for_hospitals(
            User.objects.filter(is_superuser=False), self.admin_hospitals(request), "memberships__hospital"
        )

    def get_list_display(self, request):
        # The admin of one hospital reads its name on every row for nothing, and the
        # column pushed the lists past a 1280 px screen (admin review).
        columns = super().get_list_display(request)
        if self.is_platform_admin(request) or len(self.admin_hospital_ids(request)) > 1:
            return columns
        return [column for column in columns if column != "hospital"]

    def get_list_filter(self, request):
        # Django's hospital filter lists every hospital's name: a hospital admin gets one
        # listing only the hospitals their rows are in, and only when they run several.
        filters = super().get_list_filter(request)
        if self.is_platform_admin(request):
            return filters
        several = len(self.admin_hospital_ids(request)) > 1
        hospital_filters = {self.hospital_lookup, "hospital"}
        return [
            (item, admin.RelatedOnlyFieldListFilter) if item in hospital_filters else item
            for item in filters
            if item not in hospital_filters or several
        ]

    def save_model(self, request, obj, form, change):
        if self.hospital_lookup == "hospital":
            self.check_hospital(request, obj.hospital)
        super().save_model(request, obj, form, change)

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Outsiders get the same 404 as a row that does not exist: no hint either way, and
        # the hospital whose row it is finds the try in its trail.
        raise NotInThisHospital(self.model, {"pk": object_id}, via="admin")


def _is_tenant_owned(model) -> bool:
    try:
        field = model._meta.get_field("hospital")
    except FieldDoesNotExist:
        return False
    return getattr(field, "related_model", None) is Hospital


@admin.register(Hospital)
class HospitalAdmin(HospitalScopedAdmin):
    hospital_lookup = "pk"
    hospital_admin_permissions = frozenset({VIEW, CHANGE})
    list_display = ["name", "slug", "is_active", "time_zone", "shares_reviews_for_training", "created_at"]
    search_fields = ["name", "slug"]
    list_filter = ["is_active", "shares_reviews_for_training"]
    prepopulated_fields = {"slug": ["name"]}

    def get_fields(self, request, obj=None):
        fields = ["name", "slug", "is_active", "time_zone", "shares_reviews_for_training"]
        # Not on the add form: the code shown there was a default never saved (admin review).
        return fields if obj is None else [*fields, "code", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        if self.is_platform_admin(request):
            return ["code", "created_at"]
        # A hospital admin decides training consent and the time zone for their hospital.
        return ["name", "slug", "is_active", "code", "created_at"]

    def get_prepopulated_fields(self, request, obj=None):
        return self.prepopulated_fields if self.is_platform_admin(request) else {}

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        shown = (services.CONSENT_FIELD, "is_active")
        return judged_against_what_was_shown(form, shown) if obj is not None else form

    def save_model(self, request, obj, form, change):
        if change:
            self.check_hospital(request, obj)
            services.update_hospital(obj, form.changed_data, actor=request.user, request=request)
        else:
            services.create_hospital(obj, actor=request.user, request=request)


class MembershipAddForm(forms.ModelForm):
    """A new membership names its user by email, not from a list, so a hospital admin
    never sees another hospital's staff.

    Someone whose account also belongs to another hospital is added by a platform
    operator, not by a hospital admin (`administered` is the hospitals the admin runs;
    None for a platform operator). An account is changeable only by an admin of all of
    its hospitals, so one hospital's admin adding another's doctor would take that
    doctor's account out of their own admins' hands: no password reset, no deactivation.
    """

    administered: frozenset[int] | None = None

    email = forms.EmailField(
        label="User's email",
        help_text="Someone who already has a Pleura account. To create an account, use Users, Add user.",
    )

    class Meta:
        model = Membership
        fields = ["hospital", "role", "is_active"]

    def clean(self):
        cleaned = super().clean()
        if "email" in cleaned:
            self._attach_user(cleaned["email"], cleaned.get("hospital"))
        return cleaned

    def _attach_user(self, email: str, hospital: Hospital | None) -> None:
        from accounts.models import User
        from accounts.services import normalize_email

        user = User.objects.filter(email=normalize_email(email)).first()
        if user is None:
            self.add_error("email", "No account uses this email address. Create the user instead.")
        elif user.is_superuser:
            self.add_error("email", "Platform accounts are managed by platform operators.")
        elif self.administered is not None and user.memberships.exclude(hospital__in=self.administered).exists():
            # Not why: that would tell this hospital's admin where else the person works
            # (security review).
            self.add_error("email", "A hospital admin cannot add this account. A Pleura platform operator can.")
        elif not user.is_active:
            # "Create the user" sent the admin to a form saying the email was taken (admin review).
            self.add_error(
                "email",
                "This account was deactivated. To bring them back, tick Active on their page under Users, then "
                "give them a membership here if they have none.",
            )
        elif hospital is not None and Membership.objects.filter(user=user, hospital=hospital).exists():
            self.add_error("email", f"This person is already a member of {hospital.name}.")
        else:
            self.instance.user = user


def judged_against_what_was_shown(form_class, names: tuple[str, ...]):
    """The form, with `names` counted as changed only if the admin changed them on the page.

    Django compares a posted value with the object as it is when the form is posted; a
    page opened before another admin removed someone still posts "active", which then
    read as a reactivation and was saved. The value the page showed travels with it
    (show_hidden_initial), and the services save only what changed.
    """

    class ShownValues(form_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for name in names:
                if name in self.fields:
                    self.fields[name].show_hidden_initial = True

    return ShownValues


@admin.register(Membership)
class MembershipAdmin(HospitalScopedAdmin):
    list_display = ["user", "hospital", "role", "is_active", "created_at"]
    list_filter = ["role", "is_active", "hospital"]
    search_fields = ["user__email", "user__first_name", "user__last_name"]
    list_select_related = ["user", "hospital"]
    actions = ["deactivate_selected"]
    add_form = MembershipAddForm

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["email", "hospital", "role", "is_active"]
        return ["user", "hospital", "role", "is_active", "code", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        form = super().get_form(request, obj, **kwargs)
        if obj is not None:
            form = judged_against_what_was_shown(form, ("role", "is_active"))
        if self.is_platform_admin(request):
            return form
        if obj is None:
            administered = frozenset(self.admin_hospitals(request).values_list("pk", flat=True))
            return type("ScopedMembershipAddForm", (form,), {"administered": administered})

        class KeepsAnAdmin(form):
            def clean(self):
                cleaned = super().clean()
                still_admin = cleaned.get("role") == Role.HOSPITAL_ADMIN and cleaned.get("is_active")
                left_without = [] if still_admin else services.hospitals_left_without_admin(memberships=[obj.pk])
                if left_without:
                    self.add_error(None, services.left_without_admin_message(left_without))
                return cleaned

        return KeepsAnAdmin

    def get_readonly_fields(self, request, obj=None):
        # A membership stays attached to its user and hospital; make a new one instead.
        return ["user", "hospital", "code", "created_at"] if obj else []

    def save_model(self, request, obj, form, change):
        self.check_hospital(request, obj.hospital)
        if not self.is_platform_admin(request) and obj.user.is_superuser:
            raise PermissionDenied("Platform accounts are managed by platform operators.")
        if change:
            services.update_membership(obj, form.changed_data, actor=request.user, request=request)
        else:
            services.create_membership(obj, actor=request.user, request=request)

    @admin.action(description="Deactivate selected memberships", permissions=[CHANGE])
    def deactivate_selected(self, request, queryset):
        memberships = list(queryset.select_related("user", "hospital"))
        # As the change form: platform accounts are the platform operators' to manage.
        platform = [m for m in memberships if m.user.is_superuser and not self.is_platform_admin(request)]
        self.deactivate_keeping_an_admin(
            request,
            [m for m in memberships if m not in platform],
            services.deactivate_membership,
            lambda membership: {"memberships": [membership.pk]},
            noun="membership(s)",
        )
        if platform:
            self.message_user(
                request,
                f"{len(platform)} membership(s) of platform accounts left as they were: platform operators "
                "manage those.",
                messages.WARNING,
            )


# Ten years, leap days included: 365-day years refused an expiry ten calendar years ahead
# less a day (diff review).
KEY_LIFETIME_LIMIT = timedelta(days=3653)


class IntegrationKeyForm(forms.ModelForm):
    """A key's name is unique within its hospital. Renaming a key, whose hospital is
    read-only, Django's own check leaves out (it checks only the form's fields), and the
    database's constraint would answer 500."""

    class Meta:
        model = IntegrationKey
        fields = ["hospital", "name", "expires_at"]

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is None or "expires_at" not in self.changed_data:
            return expires_at
        if expires_at <= timezone.now():
            raise ValidationError("Choose a moment in the future; to stop a key now, revoke it.")
        # 31 December 9999 west of UTC is the year 10000 in the database, which Python cannot
        # read back: the key list and every call with the key answered 500 (code review).
        if expires_at > timezone.now() + KEY_LIFETIME_LIMIT:
            raise ValidationError(
                f"Choose a moment within {KEY_LIFETIME_LIMIT.days // 365} years; "
                f"for a key that does not expire, leave this empty."
            )
        return expires_at

    def clean(self):
        cleaned = super().clean()
        hospital_id = cleaned["hospital"].pk if cleaned.get("hospital") else self.instance.hospital_id
        name = cleaned.get("name")
        taken = IntegrationKey.objects.filter(hospital_id=hospital_id, name=name).exclude(pk=self.instance.pk)
        if name and hospital_id and taken.exists():
            self.add_error("name", "Another key of this hospital has this name.")
        return cleaned


@admin.register(IntegrationKey)
class IntegrationKeyAdmin(HospitalScopedAdmin):
    form = IntegrationKeyForm
    list_display = ["name", "hospital", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["hospital"]
    search_fields = ["name", "prefix"]
    list_select_related = ["hospital"]
    actions = ["revoke_selected"]
    key_created_template = "admin/hospital/integrationkey/key_created.html"
    revoke_confirmation_template = "admin/hospital/integrationkey/revoke_confirmation.html"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["hospital", "name", "expires_at"]
        return ["hospital", "name", "prefix", "created_by", "created_at", "last_used_at", "expires_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["hospital", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        self.check_hospital(request, obj.hospital)
        if change:
            services.update_integration_key(obj, form.changed_data, actor=request.user, request=request)
        else:
            obj._raw_key = services.issue_integration_key(obj, actor=request.user, request=request)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the raw key on this one page, never stored or sent again (no message,
        no cookie, no session)."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Integration key created",
            "key": obj,
            "raw_key": obj._raw_key,
        }
        response = TemplateResponse(request, self.key_created_template, context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys", permissions=[CHANGE])
    def revoke_selected(self, request, queryset):
        keys = list(queryset.select_related("hospital"))
        if request.POST.get("confirmed") != "yes":
            # One wrong tick cut off a hospital's EMR at once (admin review): the keys are
            # named first, with what still uses them, as Django names what a delete removes.
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Revoke these integration keys?",
                "keys": keys,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, self.revoke_confirmation_template, context)
        count = sum(services.revoke_integration_key(key, actor=request.user, request=request) for key in keys)
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)


class AuditedReadsAdmin(HospitalScopedAdmin):
    """Records who read the admin's lists and pages of this model, as the portal and the
    API record theirs (`listed_action`, `viewed_action`; detail `via: admin`). Only the
    names of the list's filters are kept, never what was searched for."""

    listed_action: str = ""
    viewed_action: str = ""

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if self.listed_action and response.status_code == 200 and changelist is not None:
            self._record_listed(request, changelist.result_list)
        return response

    def _record_listed(self, request, rows) -> None:
        """One event per hospital whose rows the page showed, filed under that hospital:
        filed under the session's active hospital, a reading of one hospital's studies by
        someone who also works at another landed in the other's trail, not its own."""
        filters = sorted(request.GET)
        shown = defaultdict(list)
        for obj in rows:
            shown[obj.hospital_id].append(obj)
        if not shown:
            audit.record(self.listed_action, request=request, via="admin", count=0, filters=filters)
            return
        hospitals = Hospital.objects.in_bulk([pk for pk in shown if pk is not None])
        for hospital_id, objs in sorted(shown.items(), key=lambda item: (item[0] is None, item[0] or 0)):
            audit.record(
                self.listed_action,
                request=request,
                hospital=hospitals.get(hospital_id),
                via="admin",
                count=len(objs),
                filters=filters,
                **self.listed_detail(objs),
            )

    def listed_detail(self, rows) -> dict:
        """What the listed event says of the rows one hospital's part of the page showed."""
        return {}

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        seen = getattr(response, "context_data", {}).get("original")  # the object the page shows
        if self.viewed_action and response.status_code == 200 and seen is not None:
            audit.record(
                self.viewed_action, request=request, hospital=self.hospital_of(seen), target=seen, via="admin",
                **self.viewed_detail(seen),
            )  # fmt: skip
        return response

    def hospital_of(self, obj):
        return obj.hospital

    def viewed_detail(self, obj) -> dict:
        """What the viewed event says of the object besides its public id."""
        return {}


class ActionListFilter(admin.SimpleListFilter):
    """The trail's actions from their list: Django's own filter asks the table for its
    distinct values, 3 to 4.5 s over 3 million events (scale review)."""

    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return audit.Action.choices

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


# Dates as a filter of ranges, not a drill-down: the drill-down asks the table for its
# first and last dates and its distinct years, seconds each on a large hospital (scale review).
DATE_RANGES = ("created_at", admin.DateFieldListFilter)


@admin.register(AuditEvent)
class AuditEventAdmin(AuditedReadsAdmin):
    """Read-only for everyone, superusers included: the trail is append-only."""

    listed_action = audit.Action.AUDIT_VIEWED
    viewed_action = audit.Action.AUDIT_VIEWED

    hospital_admin_permissions = frozenset({VIEW})
    superuser_permissions = frozenset({VIEW})
    list_display = [
        "created_at",
        "action",
        "outcome",
        "actor_user",
        "actor_key",
        "hospital",
        "target_type",
        "target_id",
    ]
    list_filter = [ActionListFilter, "outcome", "hospital", DATE_RANGES]
    search_fields = ["target_id", "actor_user__email"]
    list_select_related = ["actor_user", "actor_key", "hospital"]
    show_full_result_count = False  # a second count of every event, for a filtered list's "of N"
    show_facets = admin.ShowFacets.NEVER  # a count of every event for each filter's every choice
    actions = None
    fields = [*list_display, "client_ip", "detail"]
    readonly_fields = fields

    def viewed_detail(self, obj) -> dict:
        return {"event": obj.pk}  # events have no public id: which one was read
