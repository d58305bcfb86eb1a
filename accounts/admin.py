"""Users in the scoped admin.

A hospital admin sees the members of their hospitals. They may create users (always
with a membership in one of their hospitals), and change, deactivate or reset the
password of a user who belongs to their hospitals only: a radiologist who also reads
for another hospital, or a platform operator, is read-only to them, since a change
would reach beyond their hospital. Staff and superuser flags are never theirs to set.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, BaseUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group
from django.contrib.messages.storage import default_storage
from django.db import transaction
from django.shortcuts import redirect

from accounts import services
from accounts.models import User
from hospital import services as hospital_services
from hospital.admin import HospitalScopedAdmin, judged_against_what_was_shown
from hospital.models import Hospital, Membership, Role

# Staff status follows from a hospital-admin membership (hospital.services.sync_staff_flag)
# and access from roles, not Django's groups and permissions: offered here, a ticked box
# said "changed successfully" and was set back (admin review).
SUPERUSER_FIELDSETS = (
    (None, {"fields": ("email", "password")}),
    ("Personal info", {"fields": ("first_name", "last_name")}),
    ("Access", {"fields": ("is_active", "is_staff", "is_superuser")}),
    ("Activity", {"fields": ("last_login", "date_joined", "locked_until", "failed_login_count", "code")}),
)
HOSPITAL_ADMIN_FIELDSETS = (
    (None, {"fields": ("email", "password")}),
    ("Personal info", {"fields": ("first_name", "last_name")}),
    ("Access", {"fields": ("is_active", "is_staff")}),
    ("Activity", {"fields": ("last_login", "date_joined", "locked_until", "code")}),
)
# Why a hospital admin may see an account but not change it (UserAdmin.fully_managed).
SHARED_ACCOUNT_WORDS = (
    "This account also works at another hospital (or is a platform account), so its password, name and "
    "active status are changed by a Pleura platform operator. To stop their access here, deactivate their "
    "membership of your hospital under Memberships."
)
ACTIVITY_FIELDS = ("last_login", "date_joined", "locked_until", "failed_login_count", "code")


class _EmailMixin:
    def clean_email(self) -> str:
        email = services.normalize_email(self.cleaned_data.get("email", ""))
        others = User.objects.filter(email=email).exclude(pk=self.instance.pk)
        if email and others.exists():
            raise forms.ValidationError("A user with this email address already exists.")
        return email


class UserCreationAdminForm(_EmailMixin, BaseUserCreationForm):
    """A new user always joins a hospital, so the hospital admin who made them can see them."""

    hospital = forms.ModelChoiceField(queryset=Hospital.objects.none())
    role = forms.ChoiceField(choices=Role.choices)

    class Meta:
        model = User
        fields = ("email", "first_name", "last_name")


class PasswordResetAdminForm(AdminPasswordChangeForm):
    """An admin's password reset without Django's "Password-based authentication: Disabled"
    choice, offered for SSO or LDAP, which Pleura does not have: chosen, it left an
    account no one could sign in to (admin review)."""

    def __init__(self, user, *args, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.fields.pop("usable_password", None)
        self.fields["password1"].required = self.fields["password2"].required = True


class UserChangeAdminForm(_EmailMixin, UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class MembershipInline(admin.TabularInline):
    """The user's hospitals and roles on their page, read only: a role is changed on the
    membership's own page (the link), whose saving is audited and keeps each hospital an
    admin. A hospital admin sees only memberships of the hospitals they run."""

    model = Membership
    verbose_name_plural = "Hospitals and roles (change one on its own page)"
    fields = readonly_fields = ("hospital", "role", "is_active")
    show_change_link = True
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        # Through the memberships' own admin, the one gate that scopes them.
        return self.admin_site._registry[Membership].get_queryset(request).select_related("hospital")

    def has_view_permission(self, request, obj=None) -> bool:
        return self.admin_site._registry[User].has_view_permission(request, obj)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# Access comes from hospital roles (hospital.Membership); Django's groups grant nothing here.
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(HospitalScopedAdmin, DjangoUserAdmin):
    change_user_password_template = "admin/accounts/user/change_password.html"
    hospital_lookup = "memberships__hospital"
    inlines = [MembershipInline]

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []  # a new user's first hospital is in the form

    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    change_password_form = PasswordResetAdminForm
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "first_name", "last_name", "password1", "password2")}),
        ("First hospital", {"fields": ("hospital", "role")}),
    )
    list_display = ["email", "first_name", "last_name", "is_active", "is_staff", "last_login"]
    list_filter = ["is_active", "is_staff"]
    search_fields = ["email", "first_name", "last_name"]
    ordering = ["email"]
    actions = ["deactivate_selected", "unlock_selected"]

    # -- scope: members are visible; only users entirely inside are changeable --
    def allowed(self, request, permission: str, obj=None) -> bool:
        if not super().allowed(request, permission, obj):
            return False
        if permission == "view" or obj is None or self.is_platform_admin(request):
            return True
        return self.fully_managed(request, obj)

    def fully_managed(self, request, user: User) -> bool:
        """True when every membership of `user` is in a hospital the admin administers."""
        if self.is_platform_admin(request):
            return True
        if user.is_superuser:
            return False
        return not user.memberships.exclude(hospital__in=self.admin_hospitals(request)).exists()

    # -- forms ---------------------------------------------------------------
    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        if self.is_platform_admin(request):
            return SUPERUSER_FIELDSETS
        if not self.fully_managed(request, obj):
            # Read only to this admin: no "Reset password" that ends on a 403 (admin review),
            # and the words saying why and what they can do.
            return ((None, {"fields": ("email",), "description": SHARED_ACCOUNT_WORDS}), *HOSPITAL_ADMIN_FIELDSETS[1:])
        return HOSPITAL_ADMIN_FIELDSETS

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("is_staff", *ACTIVITY_FIELDS)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is not None:
            form = judged_against_what_was_shown(form, ("is_active", "is_superuser"))
        if obj is not None and self.is_platform_admin(request):
            return form
        if obj is not None:

            class KeepsAnAdmin(form):
                def clean(self):
                    cleaned = super().clean()
                    if "is_active" in self.changed_data and not cleaned.get("is_active"):
                        left_without = hospital_services.hospitals_left_without_admin(users=[obj.pk])
                        if left_without:
                            self.add_error("is_active", hospital_services.left_without_admin_message(left_without))
                    return cleaned

            return KeepsAnAdmin
        hospitals = self.admin_hospitals(request) if not self.is_platform_admin(request) else Hospital.objects.all()

        class ScopedCreationForm(form):
            def __init__(self, *args, **inner):
                super().__init__(*args, **inner)
                choices = hospitals.filter(is_active=True)
                self.fields["hospital"].queryset = choices
                if len(choices) == 1:  # the admin of one hospital has nothing to choose
                    self.fields["hospital"].initial = choices[0].pk

        return ScopedCreationForm

    # -- saving through the services (audited) -------------------------------
    def save_model(self, request, obj, form, change):
        if change:
            services.update_user(obj, form.changed_data, actor=request.user, request=request)
            return
        hospital = form.cleaned_data["hospital"]
        self.check_hospital(request, hospital)
        services.create_user(
            obj, hospital=hospital, role=form.cleaned_data["role"], actor=request.user, request=request
        )

    def user_change_password(self, request, id, form_url=""):
        target = self.get_object(request, unquote(id))
        if target is not None and not self.has_change_permission(request, target):
            # Someone this admin may see but not change: their page, with why, not a 403
            # page saying their role does not allow it (admin review).
            self.message_user(request, SHARED_ACCOUNT_WORDS, messages.WARNING)
            return redirect("admin:accounts_user_change", target.pk)
        if target is not None and target.pk == request.user.pk:
            # One's own password only on the portal's page, which asks for the current one:
            # here anyone holding an admin's open session could set a new one and keep it.
            # Compared as the object the admin would change ("01" is the same account as "1").
            return redirect("accounts:password_change")
        # The new password and its event, all or none: saved first and audited after, a failed
        # audit write left the password changed with no trace of who changed it.
        try:
            with transaction.atomic():
                response = super().user_change_password(request, id, form_url)
                if request.method == "POST" and response.status_code == 302 and response.url != request.get_full_path():
                    user = self.get_object(request, id)
                    services.record_password_set(user, actor=request.user, request=request)
        except Exception:
            # Django queued "Password changed successfully." before the audit write failed;
            # the message cookie outlives the 500, and the admin's next page said the reset
            # rolled back here had happened. A fresh store keeps only messages from before.
            request._messages = default_storage(request)
            raise
        return response

    @admin.action(description="Deactivate selected users", permissions=["change"])
    def deactivate_selected(self, request, queryset):
        users = self._changeable(request, queryset)
        if any(user.pk == request.user.pk for user in users):
            # One tick too many signed the admin out for good (admin review): another admin
            # deactivates them, or they step down through their own membership.
            users = [user for user in users if user.pk != request.user.pk]
            self.message_user(
                request, "Your own account was left active: another admin deactivates it.", messages.WARNING
            )
        self.deactivate_keeping_an_admin(
            request, users, services.deactivate_user, lambda user: {"users": [user.pk]}, noun="user(s)"
        )

    @admin.action(description="Unlock selected accounts", permissions=["change"])
    def unlock_selected(self, request, queryset):
        users = self._changeable(request, queryset)
        count = sum(services.unlock_user(user, actor=request.user, request=request) for user in users)
        self.message_user(request, f"{count} account(s) unlocked.", messages.SUCCESS)

    def _changeable(self, request, queryset) -> list[User]:
        """The selected users this admin may change; says how many were left, and why (a
        bare "0 user(s) deactivated." said nothing: admin review)."""
        users = list(queryset)
        changeable = [user for user in users if self.fully_managed(request, user)]
        if len(changeable) < len(users):
            self.message_user(
                request, f"{len(users) - len(changeable)} left as they were. {SHARED_ACCOUNT_WORDS}", messages.WARNING
            )
        return changeable
