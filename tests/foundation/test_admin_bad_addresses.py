"""An admin list's address or action that names what no row can hold gets Django's own
refusal (the `?e=1` page, or a message), never a 500 (bad-input review: NUL characters,
which PostgreSQL refuses in a query, dates out of range, ids that are not ids)."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from hospital.models import IntegrationKey, Membership

REFUSED_ADDRESSES = [
    "/admin/diagnostics/study/?status__exact=%00",
    "/admin/diagnostics/study/?q=ACC%00",
    "/admin/hospital/auditevent/?action__exact=%00",
    "/admin/hospital/membership/?role__exact=%00",
    "/admin/diagnostics/study/?created_at__gte=99999-12-31",
    "/admin/hospital/auditevent/?created_at__lt=2026-13-45",
    "/admin/accounts/user/?q=%00",
]


@pytest.mark.parametrize("who", ["hospital_admin", "superuser"])
@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_a_list_address_no_row_can_match_is_refused_as_an_unknown_filter(client_for, request, who, address):
    response = client_for(request.getfixturevalue(who)).get(address)
    assert (response.status_code, response["Location"]) == (302, f"{address.split('?')[0]}?e=1")


def test_the_model_registry_refuses_such_an_address_too(client_for, superuser):
    response = client_for(superuser).get("/admin/mlcore/modelversion/?status__exact=%00")
    assert (response.status_code, response["Location"]) == (302, "/admin/mlcore/modelversion/?e=1")


def test_an_autocomplete_search_with_a_nul_finds_nobody(client_for, hospital_admin):
    response = client_for(hospital_admin).get(
        "/admin/autocomplete/",
        {"app_label": "hospital", "model_name": "membership", "field_name": "user", "term": "doc\x00"},
    )
    assert (response.status_code, response.json()["results"]) == (200, [])


@pytest.mark.parametrize(
    ("model", "action"), [("integrationkey", "revoke_selected"), ("membership", "deactivate_selected")]
)
def test_an_action_on_ids_that_are_not_ids_does_nothing_and_says_so(
    client_for, hospital_admin, key_a, doctor, model, action
):
    portal = client_for(hospital_admin)
    path = f"/admin/hospital/{model}/"

    response = portal.post(path, {"action": action, "_selected_action": ["abc"]})

    assert (response.status_code, response["Location"]) == (302, path)
    assert [str(message) for message in get_messages(response.wsgi_request)] == [
        "The items selected are not rows of this list: nothing done."
    ]
    assert IntegrationKey.objects.filter(revoked_at__isnull=True).count() == 1
    assert Membership.objects.filter(user=doctor, is_active=True).count() == 1


@pytest.mark.parametrize("who", ["hospital_admin", "superuser"])
@pytest.mark.parametrize(
    "address",
    [
        "/admin/diagnostics/study/?patient_id=MRN-0001",
        "/admin/diagnostics/study/?patient_id__startswith=MRN",
        "/admin/diagnostics/study/?patient_name__istartswith=doe",
        "/admin/diagnostics/study/?accession_number__startswith=ACC",
        "/admin/diagnostics/study/?patient_birth_date__year=1971",
        "/admin/hospital/integrationkey/?key_hash__startswith=a",
        # Lists without a date drill-down: refused before their dates are read.
        "/admin/hospital/membership/?created_at__year=99999",
        "/admin/hospital/integrationkey/?created_at__year=0",
        "/admin/hospital/hospital/?created_at__year=99999",
    ],
)
def test_a_list_address_filtering_by_what_the_list_offers_no_filter_for_is_400(client_for, request, who, address):
    """Django accepts a lookup on any field of the model: a patient of any hospital was found
    a character at a time, the value left in URLs and logs (admin review)."""
    response = client_for(request.getfixturevalue(who)).get(address)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("who", "address"),
    [
        ("superuser", "/admin/diagnostics/study/?status__exact=queued&hospital__id__exact=1&created_at__year=2026"),
        ("hospital_admin", "/admin/diagnostics/study/?status__exact=queued&failure_code__exact=undecodable"),
        ("hospital_admin", "/admin/hospital/membership/?role__exact=doctor&is_active__exact=1"),
        ("hospital_admin", "/admin/accounts/user/?is_active__exact=1&q=doctor"),
    ],
)
def test_the_lists_own_filters_still_work(client_for, request, who, address):
    assert client_for(request.getfixturevalue(who)).get(address).status_code == 200
