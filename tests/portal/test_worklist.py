from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from diagnostics.models import Review, Study
from hospital.audit import Action
from hospital.models import AuditEvent

WORKLIST = reverse("diagnostics:worklist")
UPDATES = reverse("diagnostics:worklist_updates")
HX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "worklist-results"}


def row_codes(html: str) -> list[str]:
    return re.findall(r'<tr id="study-([0-9a-f-]{36})"', html)


@pytest.fixture
def studies(make_study, hospital_a, hospital_b):
    return {
        "queued": make_study(hospital_a, status=Study.Status.QUEUED),
        "processing": make_study(hospital_a, status=Study.Status.PROCESSING),
        "pneumonia": make_study(hospital_a, label="pneumonia", probability=0.91, warnings=["not_chest"]),
        "normal": make_study(hospital_a, label="normal", probability=0.08),
        "failed": make_study(hospital_a, status=Study.Status.FAILED, failure_reason="Could not decode the image."),
        "other_hospital": make_study(hospital_b, label="pneumonia"),
    }


def test_doctor_sees_only_the_active_hospitals_studies_newest_first(client_for, doctor, studies):
    response = client_for(doctor).get(WORKLIST)
    assert response.status_code == 200
    html = response.content.decode()
    expected = [studies[k] for k in ("failed", "normal", "pneumonia", "processing", "queued")]
    assert row_codes(html) == [str(s.code) for s in expected]
    assert str(studies["other_hospital"].code) not in html
    assert "<title>Worklist · Pleura</title>" in html
    assert "St Mary&#x27;s Hospital" in html  # the active hospital is always visible


def test_rows_show_status_result_probability_review_and_intended_use_flag(client_for, doctor, radiologist, studies):
    Review.objects.create(
        study=studies["normal"], radiologist=radiologist, verdict="disagree", correct_label="pneumonia"
    )
    html = client_for(doctor).get(WORKLIST).content.decode()
    pneumonia_row = re.search(rf'<tr id="study-{studies["pneumonia"].code}".*?</tr>', html, re.S).group(0)
    assert "badge--completed" in pneumonia_row
    assert "Pneumonia</span>" in pneumonia_row
    assert "91%" in pneumonia_row
    assert "Outside intended use" in pneumonia_row
    assert "Not reviewed" in pneumonia_row
    normal_row = re.search(rf'<tr id="study-{studies["normal"].code}".*?</tr>', html, re.S).group(0)
    assert "Normal</span>" in normal_row and "Disputed" in normal_row
    # The threshold in words a touch or keyboard user reads too, not in a title (portal review).
    assert (
        '<span class="prob"><span class="prob__value">pneumonia 8%</span> '
        '<span class="prob__threshold">· threshold 42%</span></span>'
    ) in normal_row
    # The correction itself, not only that there is one (UX review).
    assert "radiologist: <strong>Pneumonia</strong>" in normal_row
    assert "radiologist:" not in pneumonia_row
    assert "Outside intended use" not in normal_row


def test_htmx_request_gets_only_the_results_fragment(client_for, doctor, studies):
    response = client_for(doctor).get(WORKLIST, **HX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="worklist-results"')
    assert "<html" not in html and "worklist-filters" not in html.split("<table")[0]
    assert len(row_codes(html)) == 5
    assert response["Vary"].count("HX-Request") == 1
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "queued"}, ["queued"]),
        ({"status": "failed"}, ["failed"]),
        ({"label": "pneumonia"}, ["pneumonia"]),
        ({"label": "normal"}, ["normal"]),
        ({"reviewed": "yes"}, ["normal", "pneumonia"]),
        ({"reviewed": "no"}, ["failed", "processing", "queued"]),
        # What the radiologists found, whatever the model said (portal review).
        ({"finding": "pneumonia"}, ["normal"]),
        ({"finding": "normal"}, ["pneumonia"]),
        ({"label": "normal", "finding": "pneumonia"}, ["normal"]),
    ],
)
def test_filters_narrow_the_list(client_for, doctor, radiologist, studies, filters, expected):
    Review.objects.create(
        study=studies["normal"], radiologist=radiologist, verdict="disagree", correct_label="pneumonia"
    )
    Review.objects.create(
        study=studies["pneumonia"], radiologist=radiologist, verdict="disagree", correct_label="normal"
    )
    html = client_for(doctor).get(WORKLIST, filters, **HX).content.decode()
    assert row_codes(html) == [str(studies[k].code) for k in expected]


def test_date_range_filters_on_the_received_day(client_for, doctor, studies):
    old = studies["queued"]
    Study.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    day = (timezone.now() - timedelta(days=10)).date().isoformat()
    client = client_for(doctor)
    assert row_codes(client.get(WORKLIST, {"date_from": day, "date_to": day}, **HX).content.decode()) == [str(old.code)]
    recent = client.get(WORKLIST, {"date_from": timezone.now().date().isoformat()}, **HX).content.decode()
    assert str(old.code) not in row_codes(recent) and len(row_codes(recent)) == 4


def test_times_and_days_are_the_hospitals_own(client_for, doctor, studies, hospital_a):
    """Shown in UTC with no zone, a study received at 22:30 in New York read as the next
    day's 03:30, and a filter on the day it arrived found nothing (portal review)."""
    from datetime import UTC, datetime

    hospital_a.time_zone = "America/New_York"
    hospital_a.save()
    late = studies["queued"]
    Study.objects.filter(pk=late.pk).update(created_at=datetime(2026, 11, 24, 3, 30, tzinfo=UTC))
    client = client_for(doctor)

    page = client.get(WORKLIST).content.decode()
    row = re.search(rf'<tr id="study-{late.code}".*?</tr>', page, re.S).group(0)
    assert '23 Nov 2026<span class="muted"> 22:30</span>' in row
    assert "Times are in America/New_York, St Mary&#x27;s Hospital's time zone." in page
    on_the_23rd = client.get(WORKLIST, {"date_from": "2026-11-23", "date_to": "2026-11-23"}, **HX)
    assert row_codes(on_the_23rd.content.decode()) == [str(late.code)]
    on_the_24th = client.get(WORKLIST, {"date_from": "2026-11-24", "date_to": "2026-11-24"}, **HX)
    assert str(late.code) not in row_codes(on_the_24th.content.decode())


def test_a_hospitals_time_zone_must_be_a_real_one(hospital_a):
    from django.core.exceptions import ValidationError

    hospital_a.time_zone = "Mars/Olympus_Mons"
    with pytest.raises(ValidationError, match="not an IANA time zone name"):
        hospital_a.full_clean()


@pytest.mark.parametrize("headers", [HX, {}], ids=["htmx", "a link or bookmark"])
def test_reversed_date_range_is_a_clear_400_with_no_rows(client_for, doctor, studies, headers):
    """A full page used to show every study under controls still showing the filters."""
    asked = {"label": "pneumonia", "date_from": "2025-02-01", "date_to": "2025-01-01"}
    response = client_for(doctor).get(WORKLIST, asked, **headers)
    html = response.content.decode()
    assert response.status_code == 400
    assert "The end date is before the start date." in html
    assert '<tr id="study-' not in html


def test_search_by_patient_id_or_accession_only_from_the_post_body(client_for, doctor, studies):
    client = client_for(doctor)
    target = studies["normal"]
    by_patient = client.post(WORKLIST, {"q": target.patient_id}, **HX)
    assert by_patient.status_code == 200
    assert row_codes(by_patient.content.decode()) == [str(target.code)]
    by_accession = client.post(WORKLIST, {"q": target.accession_number.lower()}, **HX)
    assert row_codes(by_accession.content.decode()) == [str(target.code)]
    # A patient ID in the query string is ignored: PHI is never accepted from a URL.
    in_url = client.get(WORKLIST, {"q": target.patient_id}, **HX)
    assert len(row_codes(in_url.content.decode())) == 5


def test_an_empty_worklist_and_a_search_without_match_say_so(client_for, doctor, studies, hospital_b):
    """Both showed a blank card: `{% if page %}` is false for a page with no rows, so
    neither the count nor the words under it appeared (portal review)."""
    page = client_for(doctor).get(reverse("diagnostics:worklist")).content.decode()
    # Nor may the browser restore the filters' last values over an unfiltered list after Back.
    assert re.search(r'<form id="worklist-filters"[^>]* autocomplete="off"', page)
    searched = client_for(doctor).post(reverse("diagnostics:worklist"), {"q": "MRN-404"}).content.decode()
    assert "0 studies matching your search" in searched
    assert "No studies match these filters." in searched
    Study.objects.filter(hospital=doctor.memberships.get().hospital).delete()
    empty = client_for(doctor).get(reverse("diagnostics:worklist")).content.decode()
    assert "0 studies" in empty
    assert "No studies yet." in empty and "Upload a radiograph</a> to get started." in empty


def test_search_never_reaches_another_hospital(client_for, outsider, studies):
    response = client_for(outsider).post(WORKLIST, {"q": studies["pneumonia"].patient_id}, **HX)
    assert row_codes(response.content.decode()) == []


def test_pagination_links_carry_filters_but_never_the_search_term(client_for, doctor, make_study, hospital_a):
    for _ in range(27):
        make_study(hospital_a, label="normal", probability=0.1, patient_id="MRN-SAME")
    client = client_for(doctor)
    first = client.get(WORKLIST, {"label": "normal"}).content.decode()
    assert len(row_codes(first)) == 25
    assert 'href="?label=normal&amp;page=2"' in first
    second = client.get(WORKLIST, {"label": "normal", "page": 2}, **HX).content.decode()
    assert len(row_codes(second)) == 2
    searched = client.post(WORKLIST, {"q": "MRN-SAME"}).content.decode()
    assert len(row_codes(searched)) == 25
    assert "MRN-SAME&" not in searched and "q=MRN" not in searched
    assert '<button type="submit" class="btn btn--small" form="worklist-filters" name="page" value="2" ' in searched
    assert """hx-include="#worklist-filters" hx-vals='{"page": "2"}'""" in searched
    searched_page_2 = client.post(WORKLIST, {"q": "MRN-SAME", "page": 2}, **HX).content.decode()
    assert len(row_codes(searched_page_2)) == 2


def test_only_pending_rows_are_polled_and_polling_stops_when_done(client_for, doctor, studies):
    client = client_for(doctor)
    html = client.get(WORKLIST).content.decode()
    poller = re.search(r'<div id="worklist-poller"[^>]*>', html).group(0)
    assert 'hx-trigger="every 3s"' in poller
    polled = sorted(re.findall(r"s=([0-9a-f-]{36})", poller))
    assert polled == sorted([str(studies["queued"].code), str(studies["processing"].code)])

    Study.objects.filter(pk=studies["processing"].pk).update(status=Study.Status.COMPLETED)
    update = client.get(UPDATES, {"s": polled}, HTTP_HX_REQUEST="true")
    body = update.content.decode()
    assert update.status_code == 200
    assert sorted(row_codes(body)) == polled
    assert body.count('hx-swap-oob="true"') == 2
    new_poller = re.search(r'<div id="worklist-poller"[^>]*>', body).group(0)
    assert re.findall(r"s=([0-9a-f-]{36})", new_poller) == [str(studies["queued"].code)]

    Study.objects.filter(pk=studies["queued"].pk).update(status=Study.Status.COMPLETED)
    done = client.get(UPDATES, {"s": [str(studies["queued"].code)]}, HTTP_HX_REQUEST="true").content.decode()
    assert "hx-get" not in re.search(r'<div id="worklist-poller"[^>]*>', done).group(0)


def test_a_poll_records_a_result_once_and_a_pending_row_once_a_session(client_for, doctor, studies):
    """The poll's rows carry patient IDs and, once settled, the result: that reading was
    in no trail. A settled row leaves the poller, so each result is recorded once; a
    pending row, re-sent every 3 s, once a session (security review: a study's code alone
    read its patient's name and ID without a trace)."""
    client = client_for(doctor)
    codes = [str(studies["queued"].code), str(studies["processing"].code)]

    def listed_by_polls():
        events = AuditEvent.objects.filter(action="study.listed", detail__via__startswith="worklist update")
        return [{**e.detail, "studies": sorted(e.detail["studies"])} for e in events.order_by("id")]

    client.get(UPDATES, {"s": codes}, HTTP_HX_REQUEST="true")
    client.get(UPDATES, {"s": codes}, HTTP_HX_REQUEST="true")
    assert listed_by_polls() == [{"via": "worklist update, pending", "count": 2, "studies": sorted(codes)}]
    Study.objects.filter(pk=studies["processing"].pk).update(status=Study.Status.COMPLETED)
    client.get(UPDATES, {"s": codes}, HTTP_HX_REQUEST="true")
    assert listed_by_polls()[1:] == [{"via": "worklist update", "count": 1, "studies": [codes[1]]}]


def test_no_poller_when_nothing_is_pending(client_for, doctor, make_study, hospital_a):
    make_study(hospital_a, label="normal", probability=0.1)
    html = client_for(doctor).get(WORKLIST).content.decode()
    assert "every 3s" not in html


def test_updates_refuse_another_hospitals_study_with_404(client_for, outsider, studies):
    client = client_for(outsider)
    response = client.get(UPDATES, {"s": [str(studies["queued"].code)]}, HTTP_HX_REQUEST="true")
    assert response.status_code == 404
    assert str(studies["queued"].code) not in response.content.decode()
    mixed = client.get(UPDATES, {"s": [str(studies["other_hospital"].code), str(studies["queued"].code)]})
    assert mixed.status_code == 404


def test_updates_with_a_malformed_or_missing_code(client_for, doctor, studies):
    client = client_for(doctor)
    assert client.get(UPDATES, {"s": "not-a-uuid"}).status_code == 404
    missing = client.get(UPDATES)
    assert missing.status_code == 400
    assert missing.content.decode() == "Ask for 1 to 25 studies."


def _count_queries(client, n_rows_expected: int) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(WORKLIST)
    assert len(row_codes(response.content.decode())) == n_rows_expected
    return len(ctx.captured_queries)


# session, user, active membership, COUNT, the page (results and review state in one
# query), audit insert, the switcher's memberships (full page only), session save (3).
FULL_PAGE_QUERIES = 10
FRAGMENT_QUERIES = 9


def test_worklist_query_count_is_constant_in_the_number_of_rows(
    client_for, doctor, radiologist, make_study, hospital_a, django_assert_num_queries
):
    client = client_for(doctor)
    first = make_study(hospital_a, label="pneumonia", warnings=["not_chest"])
    Review.objects.create(study=first, radiologist=radiologist, verdict="agree", correct_label="pneumonia")
    assert _count_queries(client, 1) == FULL_PAGE_QUERIES
    for i in range(19):
        study = make_study(hospital_a, label="normal" if i % 2 else "pneumonia", status=Study.Status.COMPLETED)
        Review.objects.create(study=study, radiologist=radiologist, verdict="disagree", correct_label="normal")
    for _ in range(4):
        make_study(hospital_a, status=Study.Status.QUEUED)
    assert _count_queries(client, 24) == FULL_PAGE_QUERIES
    with django_assert_num_queries(FRAGMENT_QUERIES):
        client.get(WORKLIST, **HX)


def test_polling_query_count_is_constant(client_for, doctor, make_study, hospital_a):
    client = client_for(doctor)
    one = [str(make_study(hospital_a, status=Study.Status.QUEUED).code)]
    with CaptureQueriesContext(connection) as small:
        client.get(UPDATES, {"s": one})
    many = one + [str(make_study(hospital_a, status=Study.Status.QUEUED).code) for _ in range(9)]
    with CaptureQueriesContext(connection) as large:
        response = client.get(UPDATES, {"s": many})
    assert len(row_codes(response.content.decode())) == 10
    assert len(small.captured_queries) == len(large.captured_queries)


def test_listing_is_audited_without_phi(client_for, doctor, studies):
    client_for(doctor).post(WORKLIST, {"q": studies["normal"].patient_id}, **HX)
    event = AuditEvent.objects.get(action=Action.STUDY_LISTED)
    assert event.actor_user == doctor
    assert event.detail == {"page": 1, "count": 1, "studies": [str(studies["normal"].code)]}
    assert studies["normal"].patient_id not in str(event.detail)


def test_anonymous_visitors_are_sent_to_sign_in(client, studies):
    response = client.get(WORKLIST)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


@pytest.mark.parametrize(
    ("page", "back_to"),
    [
        ("http://testserver/studies/0a3e6b3c-6a51-4d1c-9a8e/", "/studies/0a3e6b3c-6a51-4d1c-9a8e/"),
        ("https://elsewhere.example/phish", "/"),  # another site's page is never where we send anyone
        (None, "/"),
    ],
)
def test_a_page_request_after_the_session_ended_sends_the_window_to_sign_in_and_back(client, studies, page, back_to):
    headers = {"HTTP_HX_REQUEST": "true", **({"HTTP_HX_CURRENT_URL": page} if page else {})}
    response = client.get(WORKLIST, **headers)

    assert (response.status_code, response["HX-Redirect"]) == (401, f"/accounts/login/?next={back_to}")
    assert response.content.decode() == "Your session has ended. Please sign in again."


def test_superuser_without_membership_is_told_so_and_sent_to_the_admin(client_for, superuser):
    response = client_for(superuser).get(WORKLIST)
    assert response.status_code == 403
    assert "a platform operator with no hospital membership" in response.content.decode()
    assert '<a class="btn btn--primary" href="/admin/">Open the admin</a>' in response.content.decode()


def test_the_shared_radiologist_sees_the_hospital_picked_in_the_switcher(client_for, shared_radiologist, studies):
    client = client_for(shared_radiologist)
    html = client.get(WORKLIST).content.decode()
    assert 'name="hospital"' in html  # the switcher is shown to members of several hospitals
    # Default: the first hospital by name (Riverside Clinic, hospital B).
    assert row_codes(html) == [str(studies["other_hospital"].code)]
    hospital_a = studies["queued"].hospital
    switched = client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_a.code)})
    assert switched.status_code == 302
    assert len(row_codes(client.get(WORKLIST).content.decode())) == 5


def test_the_api_speaks_utc_to_a_portal_session_too(client_for, doctor, studies, hospital_a):
    from datetime import UTC, datetime

    hospital_a.time_zone = "America/New_York"
    hospital_a.save()
    late = studies["queued"]
    Study.objects.filter(pk=late.pk).update(created_at=datetime(2026, 11, 24, 3, 30, tzinfo=UTC))
    body = client_for(doctor).get(f"/api/v1/studies/{late.code}/", HTTP_ACCEPT="application/json").json()
    assert body["created_at"] == "2026-11-24T03:30:00Z"


def test_an_api_request_leaves_the_threads_time_zone_as_it_found_it(key_a):
    """Activated for the API, UTC stayed the worker thread's zone for its next request."""
    from django.utils import timezone as tz
    from rest_framework.test import APIClient

    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
    tz.activate("America/New_York")
    try:
        assert emr.get("/api/v1/studies/").status_code == 200
        assert str(tz.get_current_timezone()) == "America/New_York"
    finally:
        tz.deactivate()


def test_radiologists_who_split_are_counted_beside_the_correction(
    client_for, doctor, radiologist, shared_radiologist, studies
):
    """ "Disputed · radiologist: Pneumonia" read as the radiologists' finding, though another
    had agreed with the model (learning-loop review)."""
    Review.objects.create(study=studies["normal"], radiologist=radiologist, verdict="agree", correct_label="normal")
    Review.objects.create(
        study=studies["normal"], radiologist=shared_radiologist, verdict="disagree", correct_label="pneumonia"
    )
    html = client_for(doctor).get(WORKLIST).content.decode()
    normal_row = re.search(rf'<tr id="study-{studies["normal"].code}".*?</tr>', html, re.S).group(0)
    assert 'Disputed</span> <span class="small">1 of 2 radiologists: <strong>Pneumonia</strong>' in normal_row


def test_on_postgresql_a_search_finds_its_studies_by_their_indexes_in_any_case(client_for, doctor, studies):
    """By UPPER(column) with no index of it, a search read every study of the hospital
    (325 ms over 300,000; scale review)."""
    from tests.conftest import needs_postgresql

    needs_postgresql("expression indexes a search's plan uses")
    wanted = studies["normal"]
    found = row_codes(client_for(doctor).post(WORKLIST, {"q": wanted.patient_id.lower()}, **HX).content.decode())
    Study.objects.bulk_create(  # a hospital some months in
        Study(
            hospital=wanted.hospital, patient_id=f"MRN-{n:06d}", accession_number=f"ACC-{n:06d}",
            source=Study.Source.API, original_format=Study.Format.PNG, original_sha256=f"{n:064d}", original_size=1,
        )
        for n in range(5000)
    )  # fmt: skip
    search = Study.objects.filter(Q(accession_number__iexact="x") | Q(patient_id__iexact="y"), hospital=wanted.hospital)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE diagnostics_study")
        sql, params = search.order_by().values("pk").query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert found == [str(wanted.code)]
    assert ("study_accession_any_case" in plan, "study_patient_any_case" in plan) == (True, True)
