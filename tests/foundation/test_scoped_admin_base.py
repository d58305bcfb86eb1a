"""`HospitalScopedAdmin`, the base other apps register their tenant-owned models with."""

from __future__ import annotations

from django.contrib import admin
from django.test import RequestFactory

from hospital.admin import HospitalScopedAdmin
from hospital.models import AuditEvent, IntegrationKey


class _EventAdmin(HospitalScopedAdmin):
    """Any model with a `hospital` key and tenant-owned relations, as a later app's admin."""


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_foreign_key_choices_are_limited_to_the_admins_hospitals(hospital_admin, outsider, key_a, key_b, doctor):
    model_admin = _EventAdmin(AuditEvent, admin.site)
    request = _request(hospital_admin)
    fields = {name: AuditEvent._meta.get_field(name) for name in ("hospital", "actor_key", "actor_user")}
    choices = {name: set(model_admin.formfield_for_foreignkey(f, request).queryset) for name, f in fields.items()}
    assert choices["hospital"] == {key_a[0].hospital}
    assert choices["actor_key"] == {key_a[0]}
    assert choices["actor_user"] == {hospital_admin, doctor}


def test_superuser_chooses_among_all_rows(superuser, key_a, key_b):
    model_admin = _EventAdmin(AuditEvent, admin.site)
    field = model_admin.formfield_for_foreignkey(AuditEvent._meta.get_field("actor_key"), _request(superuser))
    assert set(field.queryset) == set(IntegrationKey.objects.all())


def test_permissions_follow_the_membership_role_not_django_permissions(hospital_admin, doctor, superuser):
    model_admin = _EventAdmin(AuditEvent, admin.site)
    admin_request, doctor_request, super_request = map(_request, (hospital_admin, doctor, superuser))
    doctor.is_staff = True  # staff flag alone grants nothing
    assert [model_admin.has_module_permission(r) for r in (admin_request, doctor_request, super_request)] == [
        True,
        False,
        True,
    ]
    assert [model_admin.has_delete_permission(r) for r in (admin_request, super_request)] == [False, False]
    assert hospital_admin.user_permissions.count() == 0
