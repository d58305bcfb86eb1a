"""Hospital admins manage their own hospital through the admin, every change is audited,
and nothing they post can widen their rights or reach another hospital."""

from __future__ import annotations

import re
import time

import pytest

from accounts.models import User
from hospital.models import AuditEvent, IntegrationKey, Membership, Role, hash_api_key
from tests.conftest import PASSWORD
from tests.foundation.conftest import admin_form_data

NEW_PASSWORD = "a-brand-new-passphrase-42"


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# -- escalation: refused, and the database unchanged -----------------------------


def test_hospital_admin_cannot_make_anyone_superuser_or_staff(client_for, hospital_admin, doctor):
    client = client_for(hospital_admin)
    for user in (hospital_admin, doctor):
        url = f"/admin/accounts/user/{user.pk}/change/"
        data = admin_form_data(client.get(url), is_superuser="on", is_staff="on", first_name="Renamed")
        assert client.post(url, data).status_code == 302
    doctor.refresh_from_db()
    hospital_admin.refresh_from_db()
    assert (doctor.first_name, doctor.is_staff, doctor.is_superuser) == ("Renamed", False, False)
    assert (hospital_admin.is_staff, hospital_admin.is_superuser) == (True, False)
    assert [e.detail["fields"] for e in _events("user.changed")] == [["first_name"], ["first_name"]]


def test_hospital_admin_cannot_add_a_membership_in_another_hospital(client_for, hospital_admin, doctor, hospital_b):
    client = client_for(hospital_admin)
    before = set(Membership.objects.values_list("user_id", "hospital_id", "role"))
    for user in (doctor, hospital_admin):  # including themselves
        response = client.post(
            "/admin/hospital/membership/add/",
            {"email": user.email, "hospital": hospital_b.pk, "role": Role.HOSPITAL_ADMIN, "is_active": "on"},
        )
        assert response.status_code == 200
        assert "hospital" in response.context["adminform"].form.errors
    assert set(Membership.objects.values_list("user_id", "hospital_id", "role")) == before
    assert _events("membership.created") == []


def test_hospital_admin_cannot_create_a_user_in_another_hospital(client_for, hospital_admin, hospital_b):
    response = client_for(hospital_admin).post(
        "/admin/accounts/user/add/",
        {
            "email": "intruder@riverside.example",
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "hospital": hospital_b.pk,
            "role": Role.HOSPITAL_ADMIN,
        },
    )
    assert response.status_code == 200
    assert "hospital" in response.context["adminform"].form.errors
    assert not User.objects.filter(email="intruder@riverside.example").exists()


def test_a_member_of_another_hospital_is_added_by_a_platform_operator_not_a_hospital_admin(
    client_for, hospital_admin, superuser, outsider, outsider_admin, hospital_a
):
    """Were one hospital's admin able to add another's doctor, the doctor's account would
    leave their own admins' hands (only an admin of all its hospitals may change it)."""
    add = {
        "email": " Doctor@Riverside.Example ",
        "hospital": hospital_a.pk,
        "role": Role.RADIOLOGIST,
        "is_active": "on",
    }
    client = client_for(hospital_admin)
    form = client.get("/admin/hospital/membership/add/").context["adminform"].form
    assert list(form.fields) == ["email", "hospital", "role", "is_active"]  # no list of users to pick from

    refused = client.post("/admin/hospital/membership/add/", add)

    assert refused.context["adminform"].form.errors == {
        # Not why: that would say where else the person works (security review).
        "email": ["A hospital admin cannot add this account. A Pleura platform operator can."]
    }
    assert list(outsider.memberships.values_list("hospital__slug", flat=True)) == ["riverside"]
    assert client_for(outsider_admin).get(f"/admin/accounts/user/{outsider.pk}/password/").status_code == 200

    assert client_for(superuser).post("/admin/hospital/membership/add/", add).status_code == 302
    assert sorted(outsider.memberships.values_list("hospital__slug", "role")) == [
        ("riverside", Role.DOCTOR),
        ("st-marys", Role.RADIOLOGIST),
    ]
    (event,) = _events("membership.created")
    assert (event.actor_user, event.hospital, event.target_id) == (
        superuser, hospital_a, str(outsider.memberships.get(hospital=hospital_a).code),
    )  # fmt: skip


def test_an_admin_of_both_hospitals_adds_a_member_of_one_to_the_other(client_for, hospital_admin, outsider, hospital_a):
    Membership.objects.create(
        user=hospital_admin, hospital=outsider.memberships.get().hospital, role=Role.HOSPITAL_ADMIN
    )

    response = client_for(hospital_admin).post(
        "/admin/hospital/membership/add/",
        {"email": outsider.email, "hospital": hospital_a.pk, "role": Role.RADIOLOGIST, "is_active": "on"},
    )

    assert response.status_code == 302
    assert outsider.memberships.filter(hospital=hospital_a, role=Role.RADIOLOGIST).exists()


@pytest.mark.parametrize(
    ("who", "message"),
    [
        ("nobody@nowhere.example", "No account uses this email address. Create the user instead."),
        ("inactive", "A hospital admin cannot add this account. A Pleura platform operator can."),
        ("superuser", "Platform accounts are managed by platform operators."),
        ("doctor", "This person is already a member of St Mary's Hospital."),
    ],
)
def test_membership_by_email_is_refused_with_a_reason(
    who, message, client_for, hospital_admin, doctor, superuser, outsider, hospital_a
):
    outsider.is_active = False
    outsider.save()
    email = {"inactive": outsider.email, "superuser": superuser.email, "doctor": doctor.email}.get(who, who)
    before = set(Membership.objects.values_list("user_id", "hospital_id", "role"))
    response = client_for(hospital_admin).post(
        "/admin/hospital/membership/add/",
        {"email": email, "hospital": hospital_a.pk, "role": Role.RADIOLOGIST, "is_active": "on"},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"email": [message]}
    assert set(Membership.objects.values_list("user_id", "hospital_id", "role")) == before
    assert _events("membership.created") == []


def test_hospital_admin_cannot_create_a_key_for_another_hospital(client_for, hospital_admin, hospital_b):
    response = client_for(hospital_admin).post(
        "/admin/hospital/integrationkey/add/", {"hospital": hospital_b.pk, "name": "Sneaky"}
    )
    assert response.status_code == 200
    assert "hospital" in response.context["adminform"].form.errors
    assert not IntegrationKey.objects.filter(name="Sneaky").exists()


def test_hospital_admin_cannot_move_a_membership_to_another_hospital(client_for, hospital_admin, doctor, hospital_b):
    membership = doctor.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)
    data = admin_form_data(client.get(url), hospital=hospital_b.pk, user=hospital_admin.pk)
    assert client.post(url, data).status_code == 302
    membership.refresh_from_db()
    assert (membership.user_id, membership.hospital.slug) == (doctor.pk, "st-marys")


def test_hospital_admin_can_change_only_the_training_consent_of_their_hospital(client_for, hospital_admin, hospital_a):
    url = f"/admin/hospital/hospital/{hospital_a.pk}/change/"
    client = client_for(hospital_admin)
    data = admin_form_data(client.get(url), shares_reviews_for_training="on", name="Renamed", slug="renamed")
    assert client.post(url, data).status_code == 302
    hospital_a.refresh_from_db()
    assert (hospital_a.name, hospital_a.slug, hospital_a.shares_reviews_for_training) == (
        "St Mary's Hospital",
        "st-marys",
        True,
    )
    (event,) = _events("hospital.consent_changed")
    assert (event.actor_user, event.hospital, event.detail) == (
        hospital_admin,
        hospital_a,
        {"shares_reviews_for_training": True},
    )
    assert _events("hospital.changed") == []


def test_hospital_admin_cannot_add_or_delete_hospitals(client_for, hospital_admin, hospital_a):
    client = client_for(hospital_admin)
    assert client.get("/admin/hospital/hospital/add/").status_code == 403
    assert client.post(f"/admin/hospital/hospital/{hospital_a.pk}/delete/", {"post": "yes"}).status_code == 403


# -- management, audited --------------------------------------------------------


def test_hospital_admin_creates_a_user_with_a_membership_and_both_are_audited(client_for, hospital_admin, hospital_a):
    response = client_for(hospital_admin).post(
        "/admin/accounts/user/add/",
        {
            "email": "New.Doctor@StMarys.example",
            "first_name": "New",
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "hospital": hospital_a.pk,
            "role": Role.DOCTOR,
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.doctor@stmarys.example")
    assert user.check_password(NEW_PASSWORD)
    assert (user.is_staff, user.is_superuser) == (False, False)
    assert list(user.memberships.values_list("hospital__slug", "role")) == [("st-marys", "doctor")]
    (created,) = _events("user.created")
    (joined,) = _events("membership.created")
    assert (created.actor_user, created.hospital, created.target_id) == (hospital_admin, hospital_a, str(user.code))
    assert (joined.actor_user, joined.hospital, joined.detail) == (
        hospital_admin,
        hospital_a,
        {"user": str(user.code), "role": "doctor"},
    )


def test_weak_password_is_refused_when_an_admin_creates_a_user(client_for, hospital_admin, hospital_a):
    response = client_for(hospital_admin).post(
        "/admin/accounts/user/add/",
        {
            "email": "weak@stmarys.example",
            "password1": "password",
            "password2": "password",
            "hospital": hospital_a.pk,
            "role": Role.DOCTOR,
        },
    )
    assert response.status_code == 200
    assert "password2" in response.context["adminform"].form.errors
    assert not User.objects.filter(email="weak@stmarys.example").exists()
    assert _events("user.created") == []


def test_hospital_admin_deactivates_a_user_and_it_is_audited(client_for, hospital_admin, doctor, outsider):
    client = client_for(hospital_admin)
    response = client.post(
        "/admin/accounts/user/",
        {"action": "deactivate_selected", "_selected_action": [doctor.pk, outsider.pk]},
    )
    assert response.status_code == 302
    doctor.refresh_from_db()
    outsider.refresh_from_db()
    assert (doctor.is_active, outsider.is_active) == (False, True)
    (event,) = _events("user.deactivated")
    assert (event.actor_user, event.target_id, event.hospital.slug) == (hospital_admin, str(doctor.code), "st-marys")
    # The deactivated doctor's session stops working.
    assert client_for(doctor).get("/").status_code == 302


def test_hospital_admin_resets_a_password_and_it_is_audited(client_for, hospital_admin, doctor):
    url = f"/admin/accounts/user/{doctor.pk}/password/"
    response = client_for(hospital_admin).post(
        url, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"}
    )
    assert response.status_code == 302
    doctor.refresh_from_db()
    assert doctor.check_password(NEW_PASSWORD)
    (event,) = _events("user.changed")
    assert (event.actor_user, event.target_id, event.detail) == (
        hospital_admin,
        str(doctor.code),
        {"fields": ["password"]},
    )
    assert NEW_PASSWORD not in str(list(AuditEvent.objects.values_list("detail", flat=True)))


def test_promoting_a_member_to_hospital_admin_grants_staff_and_demoting_removes_it(client_for, hospital_admin, doctor):
    membership = doctor.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)
    assert client.post(url, admin_form_data(client.get(url), role=Role.HOSPITAL_ADMIN)).status_code == 302
    doctor.refresh_from_db()
    assert doctor.is_staff is True
    assert client.post(url, admin_form_data(client.get(url), is_active=None)).status_code == 302
    doctor.refresh_from_db()
    assert doctor.is_staff is False
    changed, deactivated = _events("membership.changed") + _events("membership.deactivated")
    assert changed.detail == {"user": str(doctor.code), "role": "hospital_admin", "fields": ["role"], "staff": True}
    assert deactivated.detail == {
        "user": str(doctor.code),
        "role": "hospital_admin",
        "fields": ["is_active"],
        "staff": False,
    }


def test_deactivating_memberships_in_bulk_touches_only_the_admins_hospital(
    client_for, hospital_admin, radiologist, outsider
):
    theirs, other = radiologist.memberships.get(), outsider.memberships.get()
    response = client_for(hospital_admin).post(
        "/admin/hospital/membership/",
        {"action": "deactivate_selected", "_selected_action": [theirs.pk, other.pk]},
    )
    assert response.status_code == 302
    theirs.refresh_from_db()
    other.refresh_from_db()
    assert (theirs.is_active, other.is_active) == (False, True)
    assert [e.target_id for e in _events("membership.deactivated")] == [str(theirs.code)]


def test_created_key_is_shown_once_stored_hashed_and_audited(client_for, hospital_admin, hospital_a):
    response = client_for(hospital_admin).post(
        "/admin/hospital/integrationkey/add/", {"hospital": hospital_a.pk, "name": "EMR production"}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"].split(", ")
    raw_key = response.context["raw_key"]
    assert raw_key.startswith("plr_")
    assert raw_key in response.content.decode()
    key = IntegrationKey.objects.get(name="EMR production")
    assert (key.hospital, key.created_by, key.key_hash) == (hospital_a, hospital_admin, hash_api_key(raw_key))
    # Never again: not on the key's own page, not in the audit trail.
    page = client_for(hospital_admin).get(f"/admin/hospital/integrationkey/{key.pk}/change/")
    assert raw_key not in page.content.decode()
    (event,) = _events("key.created")
    assert (event.actor_user, event.hospital, event.detail) == (hospital_admin, hospital_a, {"prefix": key.prefix})
    assert raw_key not in str(list(AuditEvent.objects.values_list("detail", flat=True)))


def test_hospital_admin_revokes_only_their_keys_once(client_for, hospital_admin, key_a, key_b):
    client = client_for(hospital_admin)
    for _ in range(2):
        response = client.post(
            "/admin/hospital/integrationkey/",
            {"action": "revoke_selected", "_selected_action": [key_a[0].pk, key_b[0].pk], "confirmed": "yes"},
        )
        assert response.status_code == 302
    assert IntegrationKey.objects.get(pk=key_a[0].pk).revoked_at is not None
    assert IntegrationKey.objects.get(pk=key_b[0].pk).revoked_at is None
    assert [e.target_id for e in _events("key.revoked")] == [str(key_a[0].code)]


def test_nobody_deletes_users_memberships_or_keys_in_the_admin(client_for, superuser, hospital_admin, doctor, key_a):
    membership = doctor.memberships.get()
    for user in (hospital_admin, superuser):
        client = client_for(user)
        for url in [
            f"/admin/accounts/user/{doctor.pk}/delete/",
            f"/admin/hospital/membership/{membership.pk}/delete/",
            f"/admin/hospital/integrationkey/{key_a[0].pk}/delete/",
        ]:
            assert client.post(url, {"post": "yes"}).status_code == 403, (user, url)
    assert User.objects.filter(pk=doctor.pk).exists()
    assert Membership.objects.filter(pk=membership.pk).exists()
    assert IntegrationKey.objects.filter(pk=key_a[0].pk).exists()


def test_superuser_can_grant_staff_and_attach_users_anywhere(client_for, superuser, doctor, hospital_b):
    client = client_for(superuser)
    response = client.post(
        "/admin/hospital/membership/add/",
        {"email": doctor.email, "hospital": hospital_b.pk, "role": Role.RADIOLOGIST, "is_active": "on"},
    )
    assert response.status_code == 302
    assert sorted(doctor.memberships.values_list("hospital__slug", flat=True)) == ["riverside", "st-marys"]
    (event,) = _events("membership.created")
    assert (event.actor_user, event.hospital) == (superuser, hospital_b)


@pytest.mark.parametrize("password", [PASSWORD])
def test_admin_login_page_accepts_a_hospital_admin(client, hospital_admin, password):
    response = client.post("/admin/login/?next=/admin/", {"username": hospital_admin.email, "password": password})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_renaming_a_key_to_a_name_its_hospital_uses_is_a_form_error_not_a_500(client_for, hospital_admin, key_a):
    second, _ = IntegrationKey.generate(hospital=key_a[0].hospital, name="Second")
    url = f"/admin/hospital/integrationkey/{second.pk}/change/"
    client = client_for(hospital_admin)

    response = client.post(url, admin_form_data(client.get(url), name=key_a[0].name))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"name": ["Another key of this hospital has this name."]}
    assert IntegrationKey.objects.get(pk=second.pk).name == "Second"
    assert _events("key.changed") == []


def test_a_key_renamed_as_it_is_revoked_stays_revoked(hospital_admin, key_a):
    """The change view loads the key, another admin revokes it, the rename is saved: the
    whole row written back brought the revoked key back to life (code review)."""
    from hospital import services

    loaded_by_the_change_view = IntegrationKey.objects.get(pk=key_a[0].pk)
    assert services.revoke_integration_key(IntegrationKey.objects.get(pk=key_a[0].pk))
    loaded_by_the_change_view.name = "Renamed"

    services.update_integration_key(loaded_by_the_change_view, ["name"], actor=hospital_admin)

    key = IntegrationKey.objects.get(pk=key_a[0].pk)
    assert (key.name, key.revoked_at is not None) == ("Renamed", True)
    assert IntegrationKey.objects.usable().filter(pk=key.pk).exists() is False


def test_saving_a_key_page_unchanged_records_nothing(client_for, hospital_admin, key_a):
    url = f"/admin/hospital/integrationkey/{key_a[0].pk}/change/"
    client = client_for(hospital_admin)

    assert client.post(url, admin_form_data(client.get(url))).status_code == 302

    assert _events("key.changed") == []


def test_the_bulk_deactivation_leaves_a_platform_accounts_membership_as_the_form_does(
    client_for, hospital_admin, superuser, doctor, hospital_a
):
    platform = Membership.objects.create(user=superuser, hospital=hospital_a, role=Role.RADIOLOGIST)
    client = client_for(hospital_admin)

    response = client.post(
        "/admin/hospital/membership/",
        {"action": "deactivate_selected", "_selected_action": [platform.pk, doctor.memberships.get().pk]},
        follow=True,
    )

    assert [str(m) for m in response.context["messages"]] == [
        "1 membership(s) deactivated.",
        "1 membership(s) of platform accounts left as they were: platform operators manage those.",
    ]
    assert Membership.objects.get(pk=platform.pk).is_active is True
    assert doctor.memberships.get().is_active is False


# -- a hospital keeps an admin ------------------------------------------------------

LEFT_WITHOUT = "St Mary's Hospital would be left without an active hospital admin. Make someone else its admin first."


@pytest.fixture
def second_admin(django_user_model, hospital_a):
    user = django_user_model.objects.create_user(email="admin2@stmarys.example", password=PASSWORD, is_staff=True)
    Membership.objects.create(user=user, hospital=hospital_a, role=Role.HOSPITAL_ADMIN)
    return user


@pytest.mark.parametrize("change", [{"role": Role.DOCTOR}, {"is_active": None}])
def test_the_last_admin_cannot_demote_or_deactivate_their_own_membership(client_for, hospital_admin, change):
    membership = hospital_admin.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)

    response = client.post(url, admin_form_data(client.get(url), **change))

    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [LEFT_WITHOUT]
    membership.refresh_from_db()
    assert (membership.role, membership.is_active) == (Role.HOSPITAL_ADMIN, True)
    assert _events("membership.changed") + _events("membership.deactivated") == []


def test_a_second_admin_whose_account_is_deactivated_does_not_keep_the_hospital_managed(
    client_for, hospital_admin, second_admin
):
    """A deactivated account cannot sign in to manage anyone (test review: counting it
    failed no test)."""
    User.objects.filter(pk=second_admin.pk).update(is_active=False)
    membership = hospital_admin.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)

    response = client.post(url, admin_form_data(client.get(url), role=Role.DOCTOR))

    assert (response.status_code, response.context["adminform"].form.non_field_errors()) == (200, [LEFT_WITHOUT])
    assert Membership.objects.get(pk=membership.pk).role == Role.HOSPITAL_ADMIN


def test_with_a_second_admin_the_first_may_step_down(client_for, hospital_admin, second_admin):
    membership = hospital_admin.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)

    assert client.post(url, admin_form_data(client.get(url), role=Role.DOCTOR)).status_code == 302
    assert Membership.objects.get(pk=membership.pk).role == Role.DOCTOR


def test_deactivating_every_admin_at_once_keeps_the_last_one(client_for, hospital_admin, second_admin):
    client = client_for(hospital_admin)

    users = client.post(
        "/admin/accounts/user/",
        {"action": "deactivate_selected", "_selected_action": [second_admin.pk, hospital_admin.pk]},
        follow=True,
    )

    # Their own account is never theirs to deactivate in bulk (one tick too many signed them out).
    assert [str(m) for m in users.context["messages"]] == [
        "Your own account was left active: another admin deactivates it.",
        "1 user(s) deactivated.",
    ]
    assert list(User.objects.filter(pk__in=[hospital_admin.pk, second_admin.pk], is_active=True)) == [hospital_admin]


def test_the_memberships_bulk_deactivation_keeps_the_last_admin_too(client_for, hospital_admin, second_admin):
    client = client_for(hospital_admin)
    admins = Membership.objects.filter(role=Role.HOSPITAL_ADMIN)

    response = client.post(
        "/admin/hospital/membership/",
        {"action": "deactivate_selected", "_selected_action": list(admins.values_list("pk", flat=True))},
        follow=True,
    )

    assert [str(m) for m in response.context["messages"]] == ["1 membership(s) deactivated.", LEFT_WITHOUT]
    assert admins.filter(is_active=True).count() == 1


def test_the_last_admin_cannot_untick_their_own_account(client_for, hospital_admin):
    url = f"/admin/accounts/user/{hospital_admin.pk}/change/"
    client = client_for(hospital_admin)

    response = client.post(url, admin_form_data(client.get(url), is_active=None))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"is_active": [LEFT_WITHOUT]}
    assert User.objects.get(pk=hospital_admin.pk).is_active is True


def test_a_platform_operator_may_leave_a_hospital_without_admin(client_for, superuser, hospital_admin):
    membership = hospital_admin.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(superuser)

    assert client.post(url, admin_form_data(client.get(url), is_active=None)).status_code == 302
    assert Membership.objects.get(pk=membership.pk).is_active is False


def test_a_form_opened_before_a_member_was_removed_does_not_let_them_back_in(client_for, hospital_admin, doctor):
    """Another admin removed the doctor while this page was open; saving it with a role
    change wrote its stale "active" back, recorded as a plain change (concurrency review)."""
    from hospital import services

    membership = doctor.memberships.get()
    url = f"/admin/hospital/membership/{membership.pk}/change/"
    client = client_for(hospital_admin)
    page = client.get(url)
    assert 'name="initial-is_active"' in page.content.decode()  # what the page showed travels with it
    opened = admin_form_data(page, role=Role.RADIOLOGIST)
    services.deactivate_membership(membership)  # meanwhile, in another admin's browser

    assert client.post(url, opened).status_code == 302

    membership.refresh_from_db()
    assert (membership.role, membership.is_active) == (Role.RADIOLOGIST, False)
    changed = AuditEvent.objects.filter(action="membership.changed").get()
    assert changed.detail["fields"] == ["role"]


def test_a_user_form_opened_before_the_account_was_deactivated_does_not_reactivate_it(
    client_for, hospital_admin, doctor
):
    from accounts import services

    url = f"/admin/accounts/user/{doctor.pk}/change/"
    client = client_for(hospital_admin)
    opened = admin_form_data(client.get(url), first_name="Corrected")
    services.deactivate_user(doctor)  # meanwhile, in another admin's browser

    assert client.post(url, opened).status_code == 302

    doctor.refresh_from_db()
    assert (doctor.first_name, doctor.is_active) == ("Corrected", False)


@pytest.mark.django_db(transaction=True)
def test_two_admins_removing_each_other_at_once_leave_one(client_for, hospital_admin, second_admin, monkeypatch):
    """Each checked that the other was still there, then both were removed: the hospital
    had no admin left to manage its staff (concurrency review)."""
    import threading

    from django.db import connection

    from hospital import services
    from tests.conftest import needs_postgresql

    needs_postgresql("two admins' requests in two transactions at once")
    real_check = services.hospitals_left_without_admin

    def slow_check(**kwargs):
        left_without = real_check(**kwargs)
        time.sleep(0.5)  # the other request checks meanwhile, unless the check holds a lock
        return left_without

    monkeypatch.setattr(services, "hospitals_left_without_admin", slow_check)
    both_start = threading.Barrier(2, timeout=30)
    answers = []

    def remove(admin, other):
        client = client_for(admin)
        other_membership = other.memberships.get().pk
        both_start.wait()
        data = {"action": "deactivate_selected", "_selected_action": [other_membership]}
        answers.append(client.post("/admin/hospital/membership/", data).status_code)
        connection.close()

    threads = [
        threading.Thread(target=remove, args=(hospital_admin, second_admin)),
        threading.Thread(target=remove, args=(second_admin, hospital_admin)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert answers == [302, 302]
    assert Membership.objects.filter(role=Role.HOSPITAL_ADMIN, is_active=True).count() == 1


def test_a_hospital_page_opened_before_consent_was_withdrawn_does_not_grant_it_again(
    client_for, hospital_admin, hospital_a
):
    """Saved with a time zone change, the stale page wrote "consents" back and the audit
    recorded it as this admin's decision (diff review)."""
    from hospital import services

    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    url = f"/admin/hospital/hospital/{hospital_a.pk}/change/"
    client = client_for(hospital_admin)
    opened = admin_form_data(client.get(url), time_zone="America/New_York")
    hospital_a.shares_reviews_for_training = False  # meanwhile, on the consent page
    services.update_hospital(hospital_a, [services.CONSENT_FIELD])

    assert client.post(url, opened).status_code == 302

    hospital_a.refresh_from_db()
    assert (hospital_a.time_zone, hospital_a.shares_reviews_for_training) == ("America/New_York", False)
    consent_events = AuditEvent.objects.filter(action="hospital.consent_changed").order_by("id")
    assert [e.detail["shares_reviews_for_training"] for e in consent_events] == [False]


# -- the user's page -------------------------------------------------------------------


def inline_cells(html: str, field: str) -> list[str]:
    cells = re.findall(rf'<td class="field-{field}">(.*?)</td>', html, re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def test_a_users_page_lists_their_roles_in_the_admins_hospitals_each_linked_to_its_own_page(
    client_for, hospital_admin, shared_radiologist, hospital_a
):
    membership = shared_radiologist.memberships.get(hospital=hospital_a)

    html = client_for(hospital_admin).get(f"/admin/accounts/user/{shared_radiologist.pk}/change/").content.decode()

    assert "Hospitals and roles" in html
    assert inline_cells(html, "hospital") == ["St Mary&#x27;s Hospital"]
    assert inline_cells(html, "role") == ["Radiologist"]
    assert f'<a href="/admin/hospital/membership/{membership.pk}/change/" class="inlineviewlink">' in html
    assert "Riverside Clinic" not in html  # their other hospital is not this admin's


def test_a_platform_operator_sees_every_hospital_of_a_user_on_their_page(client_for, superuser, shared_radiologist):
    html = client_for(superuser).get(f"/admin/accounts/user/{shared_radiologist.pk}/change/").content.decode()

    assert inline_cells(html, "hospital") == ["Riverside Clinic", "St Mary&#x27;s Hospital"]


def test_the_admin_of_one_hospital_finds_it_chosen_on_the_new_user_form(client_for, hospital_admin, hospital_a):
    html = client_for(hospital_admin).get("/admin/accounts/user/add/").content.decode()

    assert re.findall(r'<option value="(\d+)" selected>', html) == [str(hospital_a.pk)]
    assert "Hospitals and roles" not in html


def test_a_save_that_changes_nothing_leaves_nothing_in_the_trail(client_for, hospital_admin, doctor):
    """Both read as changes in the hospital's audit log (admin review)."""
    client = client_for(hospital_admin)
    for url in (
        f"/admin/accounts/user/{doctor.pk}/change/",
        f"/admin/hospital/membership/{doctor.memberships.get().pk}/change/",
    ):
        assert client.post(url, admin_form_data(client.get(url))).status_code == 302

    assert _events("user.changed") + _events("membership.changed") == []


def test_reactivating_an_account_or_a_membership_is_recorded_as_such(client_for, hospital_admin, doctor):
    from accounts import services as accounts_services
    from hospital import services

    membership = doctor.memberships.get()
    accounts_services.deactivate_user(doctor)
    services.deactivate_membership(membership)
    client = client_for(hospital_admin)
    for url in (f"/admin/accounts/user/{doctor.pk}/change/", f"/admin/hospital/membership/{membership.pk}/change/"):
        assert client.post(url, admin_form_data(client.get(url), is_active="on")).status_code == 302

    assert [
        (e.action, e.detail["fields"]) for e in _events("user.reactivated") + _events("membership.reactivated")
    ] == [
        ("user.reactivated", ["is_active"]),
        ("membership.reactivated", ["is_active"]),
    ]
    assert _events("user.changed") + _events("membership.changed") == []


def test_a_bulk_action_on_someone_who_also_works_elsewhere_says_why_they_were_left(
    client_for, hospital_admin, shared_radiologist
):
    """A green "0 user(s) deactivated." said nothing of why (admin review)."""
    from accounts.admin import SHARED_ACCOUNT_WORDS

    response = client_for(hospital_admin).post(
        "/admin/accounts/user/",
        {"action": "deactivate_selected", "_selected_action": [shared_radiologist.pk]},
        follow=True,
    )

    assert [str(m) for m in response.context["messages"]] == [
        f"1 left as they were. {SHARED_ACCOUNT_WORDS}",
        "0 user(s) deactivated.",
    ]
    assert User.objects.get(pk=shared_radiologist.pk).is_active


def test_adding_someone_whose_account_was_deactivated_says_how_to_bring_them_back(
    client_for, hospital_admin, doctor, hospital_a
):
    """Membership said "create the user", and creating the user said the email was taken (admin review)."""
    from accounts import services

    services.deactivate_user(doctor)

    response = client_for(hospital_admin).post(
        "/admin/hospital/membership/add/",
        {"email": doctor.email, "hospital": hospital_a.pk, "role": Role.DOCTOR, "is_active": "on"},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["email"] == [
        "This account was deactivated. To bring them back, tick Active on their page under Users, then give them a "
        "membership here if they have none."
    ]


def test_the_operators_user_form_offers_only_controls_that_take_effect(client_for, superuser, doctor):
    """Staff status ticked on a doctor said "changed successfully" and was set back (it
    follows from a hospital-admin membership); groups and permissions grant nothing here."""
    client = client_for(superuser)
    url = f"/admin/accounts/user/{doctor.pk}/change/"
    form = client.get(url).context["adminform"].form

    assert ("is_staff" in form.fields, "is_superuser" in form.fields) == (False, True)
    assert not {"groups", "user_permissions"} & set(form.fields)
    assert client.get("/admin/auth/group/").status_code == 404


def test_the_new_hospital_form_shows_no_code_it_would_not_keep(client_for, superuser):
    html = client_for(superuser).get("/admin/hospital/hospital/add/").content.decode()
    assert 'class="form-row field-code"' not in html and "field-name" in html


def test_revoking_keys_asks_first_naming_each_key_and_its_last_use(client_for, hospital_admin, key_a):
    """One wrong tick cut off a hospital's EMR at once (admin review)."""
    client = client_for(hospital_admin)

    asked = client.post(
        "/admin/hospital/integrationkey/", {"action": "revoke_selected", "_selected_action": [key_a[0].pk]}
    )

    html = asked.content.decode()
    assert asked.status_code == 200
    assert "<strong>EMR St Mary&#x27;s</strong> (St Mary&#x27;s Hospital" in html and "never used" in html
    assert 'value="Yes, revoke 1 key"' in html
    assert IntegrationKey.objects.get(pk=key_a[0].pk).revoked_at is None
    assert _events("key.revoked") == []


def test_a_password_reset_cannot_switch_password_sign_in_off(client_for, hospital_admin, doctor):
    """Django offers "Password-based authentication: Disabled" for SSO or LDAP, which Pleura
    lacks: chosen, the account could never sign in again (admin review)."""
    url = f"/admin/accounts/user/{doctor.pk}/password/"
    client = client_for(hospital_admin)
    assert "usable_password" not in client.get(url).context["form"].fields

    response = client.post(url, {"usable_password": "false"})

    assert response.status_code == 200  # the passwords are required
    doctor.refresh_from_db()
    assert doctor.has_usable_password() and doctor.check_password(PASSWORD)


def test_a_key_is_given_an_expiry_in_the_future_and_its_creation_records_it(client_for, hospital_admin, hospital_a):
    from datetime import timedelta

    from django.utils import timezone

    client = client_for(hospital_admin)
    past = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    refused = client.post(
        "/admin/hospital/integrationkey/add/",
        {"hospital": hospital_a.pk, "name": "EMR", "expires_at_0": past, "expires_at_1": "00:00:00"},
    )
    assert refused.context["adminform"].form.errors["expires_at"] == [
        "Choose a moment in the future; to stop a key now, revoke it."
    ]

    future = (timezone.now() + timedelta(days=365)).strftime("%Y-%m-%d")
    client.post(
        "/admin/hospital/integrationkey/add/",
        {"hospital": hospital_a.pk, "name": "EMR", "expires_at_0": future, "expires_at_1": "00:00:00"},
    )
    key = IntegrationKey.objects.get(name="EMR")
    (created,) = _events("key.created")
    assert created.detail["expires_at"] == key.expires_at.isoformat()
    assert key.expires_at.strftime("%Y-%m-%d") == future


def test_a_key_expiring_in_the_year_9999_is_refused_as_a_form_error(client_for, hospital_admin, hospital_a):
    """West of UTC, 31 December 9999 is stored as the year 10000, which Python cannot read
    back: the key list and every call with the key answered 500 (code review)."""
    from datetime import timedelta

    from django.utils import timezone

    hospital_a.time_zone = "America/New_York"
    hospital_a.save()
    client = client_for(hospital_admin)

    refused = client.post(
        "/admin/hospital/integrationkey/add/",
        {"hospital": hospital_a.pk, "name": "EMR", "expires_at_0": "9999-12-31", "expires_at_1": "23:59:59"},
    )

    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["expires_at"] == [
        "Choose a moment within 10 years; for a key that does not expire, leave this empty."
    ]
    assert not IntegrationKey.objects.filter(name="EMR").exists()
    assert client.get("/admin/hospital/integrationkey/").status_code == 200

    # Ten calendar years ahead less a day, leap days and all, is taken (diff review).
    today = timezone.localdate()
    ten_years = today.replace(year=today.year + 10, day=min(today.day, 28)) - timedelta(days=1)
    client.post(
        "/admin/hospital/integrationkey/add/",
        {"hospital": hospital_a.pk, "name": "EMR", "expires_at_0": ten_years.isoformat(), "expires_at_1": "00:00:00"},
    )
    assert IntegrationKey.objects.filter(name="EMR").exists()
