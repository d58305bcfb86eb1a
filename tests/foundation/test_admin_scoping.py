"""The admin shows each hospital admin their own hospital's rows, and nothing of another's."""

from __future__ import annotations

import pytest

from accounts.admin import SHARED_ACCOUNT_WORDS
from accounts.models import User
from hospital import audit
from hospital.models import AuditEvent, IntegrationKey, Membership
from tests.foundation.conftest import changelist_rows


@pytest.fixture
def events(hospital_a, hospital_b, doctor, outsider):
    """One audit event in each hospital and one platform-level event."""
    return {
        "a": audit.record(audit.Action.STUDY_VIEWED, actor=doctor, hospital=hospital_a, target=hospital_a),
        "b": audit.record(audit.Action.STUDY_VIEWED, actor=outsider, hospital=hospital_b, target=hospital_b),
        "platform": audit.record(audit.Action.MODEL_PROMOTED),
    }


def test_hospital_admin_lists_only_members_of_their_hospital(
    client_for, hospital_admin, doctor, radiologist, outsider, outsider_admin, shared_radiologist, superuser
):
    response = client_for(hospital_admin).get("/admin/accounts/user/")
    assert response.status_code == 200
    assert {u.email for u in changelist_rows(response)} == {
        hospital_admin.email,
        doctor.email,
        radiologist.email,
        shared_radiologist.email,
    }
    assert outsider.email not in response.content.decode()
    assert superuser.email not in response.content.decode()


def test_superuser_lists_every_user(client_for, superuser, hospital_admin, doctor, outsider, outsider_admin):
    response = client_for(superuser).get("/admin/accounts/user/")
    assert response.status_code == 200
    assert len(changelist_rows(response)) == User.objects.count() == 5


def test_hospital_admin_lists_only_their_hospitals_memberships(
    client_for, hospital_admin, doctor, outsider, outsider_admin, shared_radiologist
):
    response = client_for(hospital_admin).get("/admin/hospital/membership/")
    assert response.status_code == 200
    rows = changelist_rows(response)
    assert {(m.user.email, m.hospital.slug) for m in rows} == {
        (hospital_admin.email, "st-marys"),
        (doctor.email, "st-marys"),
        (shared_radiologist.email, "st-marys"),
    }
    # The sidebar has no hospital filter that would name other hospitals.
    assert "Riverside" not in response.content.decode()


def test_hospital_admin_lists_only_their_hospitals_keys(client_for, hospital_admin, key_a, key_b):
    response = client_for(hospital_admin).get("/admin/hospital/integrationkey/")
    assert response.status_code == 200
    assert changelist_rows(response) == [key_a[0]]
    assert key_b[0].prefix not in response.content.decode()


def test_hospital_admin_lists_only_their_hospitals_audit_events(client_for, hospital_admin, events):
    response = client_for(hospital_admin).get("/admin/hospital/auditevent/")
    assert response.status_code == 200
    rows = changelist_rows(response)
    assert events["a"] in rows
    assert events["b"] not in rows
    assert events["platform"] not in rows
    assert {event.hospital_id for event in rows} == {events["a"].hospital_id}


def test_superuser_lists_every_audit_event(client_for, superuser, events):
    client = client_for(superuser)
    before = set(AuditEvent.objects.all())
    response = client.get("/admin/hospital/auditevent/")
    assert response.status_code == 200
    assert set(changelist_rows(response)) == before  # and the reading itself is recorded after


def test_hospital_admin_sees_only_their_own_hospital(client_for, hospital_admin, hospital_b):
    response = client_for(hospital_admin).get("/admin/hospital/hospital/")
    assert [h.slug for h in changelist_rows(response)] == ["st-marys"]
    assert client_for(hospital_admin).get(f"/admin/hospital/hospital/{hospital_b.pk}/change/").status_code == 404


@pytest.mark.parametrize(
    ("url", "tries_recorded_in"),
    [
        # A user belongs to hospitals through memberships: no one row owns the try.
        ("/admin/accounts/user/{outsider.pk}/change/", []),
        ("/admin/accounts/user/{outsider.pk}/password/", []),
        ("/admin/accounts/user/{superuser.pk}/change/", []),
        ("/admin/hospital/membership/{membership_b.pk}/change/", ["riverside", "riverside"]),
        ("/admin/hospital/integrationkey/{key_b.pk}/change/", ["riverside", "riverside"]),
        # The trail is read-only: the change is refused (403) before any row is looked up.
        ("/admin/hospital/auditevent/{event_b.pk}/change/", ["riverside", "st-marys"]),
    ],
)
def test_hospital_admin_gets_404_for_another_hospitals_rows(
    client_for, hospital_admin, outsider, superuser, key_b, url, tries_recorded_in
):
    membership_b = Membership.objects.get(user=outsider)
    event_b = audit.record(audit.Action.STUDY_VIEWED, actor=outsider, hospital=outsider.memberships.get().hospital)
    client = client_for(hospital_admin)
    target = url.format(
        outsider=outsider, superuser=superuser, membership_b=membership_b, key_b=key_b[0], event_b=event_b
    )
    before = AuditEvent.objects.count()
    assert client.get(target).status_code == 404
    assert client.post(target, {"email": "taken@over.example", "name": "x", "role": "hospital_admin"}).status_code in {
        403,
        404,
    }
    outsider.refresh_from_db()
    membership_b.refresh_from_db()
    assert outsider.email == "doctor@riverside.example"
    assert membership_b.role == "doctor"
    assert IntegrationKey.objects.get(pk=key_b[0].pk).name == "EMR Riverside"
    # Changed nothing, and each try is kept where that hospital's admins read it.
    tries = AuditEvent.objects.order_by("id")[before:]
    assert [(e.action, e.outcome, e.actor_user, e.hospital.slug) for e in tries] == [
        ("access.denied", "denied", hospital_admin, slug) for slug in tries_recorded_in
    ]


def test_staff_member_without_the_admin_role_gets_403_everywhere(client_for, doctor, key_a):
    User.objects.filter(pk=doctor.pk).update(is_staff=True)  # staff, but only a doctor in hospital A
    client = client_for(doctor)
    response = client.get("/admin/")
    assert response.status_code == 200
    assert response.context["app_list"] == []
    for url in [
        "/admin/accounts/user/",
        f"/admin/accounts/user/{doctor.pk}/change/",
        "/admin/hospital/membership/",
        "/admin/hospital/integrationkey/",
        "/admin/hospital/integrationkey/add/",
        "/admin/hospital/auditevent/",
        "/admin/hospital/hospital/",
    ]:
        assert client.get(url).status_code == 403, url


def test_non_staff_member_is_sent_to_the_admin_login(client_for, doctor):
    response = client_for(doctor).get("/admin/accounts/user/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_anonymous_visitor_is_sent_to_the_admin_login(client, hospital_admin):
    response = client.get("/admin/hospital/auditevent/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_hospital_admin_sees_a_shared_radiologist_read_only(client_for, hospital_admin, shared_radiologist):
    client = client_for(hospital_admin)
    url = f"/admin/accounts/user/{shared_radiologist.pk}/change/"
    response = client.get(url)
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    # Changing them would reach into hospital B: refused, nothing changed.
    response = client.post(url, {"email": "reader@elsewhere.example", "first_name": "X", "is_active": ""})
    assert response.status_code == 403
    shared_radiologist.refresh_from_db()
    assert (shared_radiologist.email, shared_radiologist.is_active) == ("reader@both.example", True)
    # No "Reset password" on their page, and its address leads back to it, saying why.
    page = client.get(url).content.decode()
    assert "password/" not in page and SHARED_ACCOUNT_WORDS.split(",")[0] in page
    reset = client.get(f"/admin/accounts/user/{shared_radiologist.pk}/password/", follow=True)
    assert reset.redirect_chain == [(url, 302)]
    assert [str(m) for m in reset.context["messages"]] == [SHARED_ACCOUNT_WORDS]


def test_hospital_admin_index_lists_the_foundation_models_but_not_groups(client_for, hospital_admin):
    response = client_for(hospital_admin).get("/admin/")
    models = {
        (app["app_label"], model["object_name"]) for app in response.context["app_list"] for model in app["models"]
    }
    assert {
        ("accounts", "User"),
        ("hospital", "Hospital"),
        ("hospital", "Membership"),
        ("hospital", "IntegrationKey"),
        ("hospital", "AuditEvent"),
    } <= models
    assert ("auth", "Group") not in models


def test_every_foundation_admin_page_renders_for_hospital_admins_and_superusers(
    client_for, hospital_admin, superuser, doctor, key_a, hospital_a
):
    event = AuditEvent.objects.create(action="study.viewed", hospital=hospital_a)
    membership = doctor.memberships.get()
    pages = [
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/user/add/",
        f"/admin/accounts/user/{doctor.pk}/change/",
        f"/admin/accounts/user/{doctor.pk}/password/",
        "/admin/hospital/membership/",
        "/admin/hospital/membership/add/",
        f"/admin/hospital/membership/{membership.pk}/change/",
        "/admin/hospital/integrationkey/",
        "/admin/hospital/integrationkey/add/",
        f"/admin/hospital/integrationkey/{key_a[0].pk}/change/",
        "/admin/hospital/auditevent/",
        f"/admin/hospital/auditevent/{event.pk}/change/",
        "/admin/hospital/hospital/",
        f"/admin/hospital/hospital/{hospital_a.pk}/change/",
    ]
    for user in (hospital_admin, superuser):
        client = client_for(user)
        assert {url: client.get(url).status_code for url in pages} == dict.fromkeys(pages, 200)


def test_an_admin_of_two_hospitals_filters_by_them_and_sees_no_other_hospitals_name(
    client_for, hospital_admin, hospital_a, hospital_b, doctor, outsider
):
    """They had no hospital filter at all (admin review); Django's own lists every hospital."""
    from hospital.models import Hospital, Membership, Role

    third = Hospital.objects.create(name="Hillside Infirmary", slug="hillside")
    Membership.objects.create(user=hospital_admin, hospital=hospital_b, role=Role.HOSPITAL_ADMIN)
    client = client_for(hospital_admin)

    page = client.get("/admin/hospital/membership/").content.decode()
    filtered = client.get(f"/admin/hospital/membership/?hospital__id__exact={hospital_b.pk}")

    assert "Riverside Clinic" in page and "St Mary&#x27;s Hospital" in page and third.name not in page
    assert {str(row.hospital) for row in filtered.context["cl"].result_list} == {"Riverside Clinic"}


def test_an_admin_of_one_hospital_has_no_hospital_filter(client_for, hospital_admin, hospital_b):
    page = client_for(hospital_admin).get("/admin/hospital/membership/").content.decode()
    assert "By hospital" not in page and "Riverside Clinic" not in page


def test_the_admin_of_one_hospital_reads_no_hospital_column(client_for, hospital_admin, superuser, key_a):
    """Its name on every row pushed the lists past a 1280 px screen (admin review)."""
    mine = client_for(hospital_admin).get("/admin/hospital/integrationkey/").context["cl"].list_display
    assert "hospital" not in mine
    assert "hospital" in client_for(superuser).get("/admin/hospital/integrationkey/").context["cl"].list_display
