from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from hospital import audit
from hospital.audit import Action
from hospital.models import AuditEvent

AUDIT = reverse("hospital:audit_log")
HX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "audit-results"}


def action_cells(html: str) -> list[str]:
    return re.findall(r'<span class="muted mono small">([a-z_.]+)</span>', html)


@pytest.fixture
def events(hospital_a, hospital_b, doctor, radiologist, outsider):
    old = timezone.now() - timedelta(days=40)
    audit.record(Action.STUDY_UPLOADED, actor=doctor, hospital=hospital_a)
    audit.record(Action.REVIEW_SAVED, actor=radiologist, hospital=hospital_a)
    AuditEvent.objects.create(action=Action.LOGIN, actor_user=doctor, hospital=hospital_a, created_at=old)
    audit.record(Action.STUDY_VIEWED, actor=outsider, hospital=hospital_b)


def test_hospital_admin_sees_only_their_hospitals_events(client_for, hospital_admin, events):
    response = client_for(hospital_admin).get(AUDIT)
    html = response.content.decode()
    assert response.status_code == 200
    # Newest first; the admin's own sign-in and viewing of the log are in it too.
    assert action_cells(html) == ["audit.viewed", "auth.login", "review.saved", "study.uploaded", "auth.login"]
    assert "doctor@riverside.example" not in html
    assert f'href="{reverse("admin:index")}"' in html  # the scoped Django admin is linked
    assert "<title>Audit log · Pleura</title>" in html


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"action": "review.saved"}, ["review.saved"]),
        ({"user": "doctor"}, ["study.uploaded", "auth.login"]),
        ({"date_to": "OLD"}, ["auth.login"]),
        ({"date_from": "TODAY", "action": "study.uploaded"}, ["study.uploaded"]),
    ],
)
def test_filters_by_user_action_and_date(client_for, hospital_admin, doctor, events, params, expected):
    today = timezone.now().date()
    values = {"doctor": str(doctor.code), "OLD": (today - timedelta(days=40)).isoformat(), "TODAY": today.isoformat()}
    params = {key: values.get(value, value) for key, value in params.items()}
    html = client_for(hospital_admin).get(AUDIT, params, **HX).content.decode()
    assert html.lstrip().startswith('<section id="audit-results"')
    assert action_cells(html) == expected


def test_a_user_of_another_hospital_is_not_a_valid_filter(client_for, hospital_admin, outsider, events):
    response = client_for(hospital_admin).get(AUDIT, {"user": str(outsider.code)}, **HX)
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert action_cells(response.content.decode()) == []


def test_another_hospitals_emr_key_is_neither_offered_nor_taken_as_a_filter(client_for, hospital_admin, key_a, key_b):
    """Test review: offering every hospital's keys failed no test."""
    client = client_for(hospital_admin)

    page = client.get(AUDIT).content.decode()
    refused = client.get(AUDIT, {"key": str(key_b[0].code)}, **HX)

    offered = re.findall(
        r'<option value="[0-9a-f-]+">([^<]+)</option>',
        re.search(r'<select name="key".*?</select>', page, re.S).group(0),
    )
    assert [name.split(" (")[0] for name in offered] == ["EMR St Mary&#x27;s"]
    assert refused.status_code == 400
    assert "EMR Riverside" not in refused.content.decode()


def test_viewing_the_log_is_audited(client_for, hospital_admin, events):
    client_for(hospital_admin).get(AUDIT, {"action": "review.saved"})
    event = AuditEvent.objects.filter(action=Action.AUDIT_VIEWED).get()
    assert (event.actor_user, event.hospital_id) == (hospital_admin, hospital_admin.memberships.get().hospital_id)
    assert event.detail == {"filters": ["action"]}


@pytest.mark.parametrize("hx", [False, True])
def test_doctors_and_radiologists_get_403(client_for, doctor, radiologist, events, hx, client):
    for user in (doctor, radiologist):
        client.logout()
        assert client_for(user).get(AUDIT, **(HX if hx else {})).status_code == 403
    assert not AuditEvent.objects.filter(action=Action.AUDIT_VIEWED).exists()


def test_the_other_hospitals_admin_sees_only_theirs(client_for, outsider_admin, events):
    html = client_for(outsider_admin).get(AUDIT).content.decode()
    assert action_cells(html) == ["audit.viewed", "auth.login", "study.viewed"]


def test_nav_shows_audit_and_admin_links_only_to_hospital_admins(client_for, doctor, hospital_admin, client):
    doctor_html = client_for(doctor).get(reverse("diagnostics:worklist")).content.decode()
    assert AUDIT not in doctor_html and "Administration" not in doctor_html
    client.logout()
    admin_html = client_for(hospital_admin).get(reverse("diagnostics:worklist")).content.decode()
    assert f'href="{AUDIT}"' in admin_html and f'href="{reverse("admin:index")}"' in admin_html


def test_audit_query_count_is_constant(client_for, hospital_admin, doctor, hospital_a):
    client = client_for(hospital_admin)
    audit.record(Action.STUDY_UPLOADED, actor=doctor, hospital=hospital_a)
    with CaptureQueriesContext(connection) as few:
        client.get(AUDIT)
    for _ in range(30):
        audit.record(Action.STUDY_VIEWED, actor=doctor, hospital=hospital_a)
    with CaptureQueriesContext(connection) as many:
        html = client.get(AUDIT).content.decode()
    assert len(action_cells(html)) == 34  # + the admin's sign-in and two views of the log
    assert len(few.captured_queries) == len(many.captured_queries)


def test_a_study_sent_again_after_it_failed_reads_so(client_for, hospital_admin, doctor, hospital_a):
    audit.record(Action.STUDY_UPLOADED, actor=doctor, hospital=hospital_a, created=True)
    audit.record(Action.STUDY_UPLOADED, actor=doctor, hospital=hospital_a, created=False, sent_again=True)

    html = client_for(hospital_admin).get(AUDIT).content.decode()

    uploads = re.findall(r"<td>(Study uploaded[^<]*) <span", html)
    assert uploads == ["Study uploaded again, after it failed", "Study uploaded"]


def target_cells(html: str) -> list[str]:
    fifth_cell = r"<tr>\s*<td><time.*?</td>" + r"\s*<td>.*?</td>" * 3 + r"\s*<td>(.*?)</td>"
    cells = re.findall(fifth_cell, html, re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def test_targets_of_this_hospital_are_named_and_others_keep_their_code(
    client_for, hospital_admin, doctor, radiologist, outsider, hospital_a, key_a, key_b
):
    key, _ = key_a
    for target in (doctor, radiologist.memberships.get(), key, hospital_a, outsider, key_b[0]):
        # A membership's event records the role it left, which may not be today's.
        detail = {"role": "doctor"} if target == radiologist.memberships.get() else {}
        audit.record(Action.USER_CHANGED, actor=hospital_admin, hospital=hospital_a, target=target, **detail)

    html = client_for(hospital_admin).get(AUDIT, {"action": Action.USER_CHANGED}).content.decode()

    # Newest first. Another hospital's user and key (the targets of refused requests) are
    # not named in this hospital's log.
    assert target_cells(html) == [
        f"EMR key {key_b[0].code}",
        f"user {outsider.code}",
        "hospital St Mary&#x27;s Hospital",
        "EMR key EMR St Mary&#x27;s",
        "membership radiologist@stmarys.example as Doctor",
        "user doctor@stmarys.example",
    ]


def test_a_model_built_from_the_hospitals_reviews_is_named_in_its_log(client_for, hospital_admin, hospital_a):
    from mlcore.models import ModelVersion

    version = ModelVersion.objects.create(
        name="pleura-ft-7", architecture="resnet18", image_size=64, weights_path="w.pt", weights_sha256="0" * 64,
        threshold=0.5,
    )  # fmt: skip
    audit.record(Action.MODEL_PROMOTED, hospital=hospital_a, target=version, name=version.name)

    html = client_for(hospital_admin).get(AUDIT, {"action": Action.MODEL_PROMOTED}).content.decode()

    assert target_cells(html) == ["model pleura-ft-7"]


def test_who_opened_one_study_and_what_an_emr_key_did_are_answered_with_the_detail_shown(
    client_for, hospital_admin, doctor, radiologist, key_a, make_study, hospital_a
):
    """ "Who looked at this patient's film?" needed the Django admin: the log had no study or
    key filter, and never showed an event's detail, so a heatmap's viewing read as the
    image's and an agreement as a disagreement (admin review)."""
    study, other = make_study(hospital_a), make_study(hospital_a)
    audit.record(Action.IMAGE_VIEWED, actor=doctor, hospital=hospital_a, target=study, image="heatmap")
    audit.record(Action.REVIEW_SAVED, actor=radiologist, hospital=hospital_a, target=study, verdict="agree")
    audit.record(Action.IMAGE_VIEWED, actor=doctor, hospital=hospital_a, target=other, image="display")
    audit.record(Action.STUDY_VIEWED, key=key_a[0], hospital=hospital_a, target=other, via="api")
    client = client_for(hospital_admin)

    by_study = client.get(AUDIT, {"study": str(study.code)}, **HX).content.decode()
    by_key = client.get(AUDIT, {"key": str(key_a[0].code)}, **HX).content.decode()

    assert action_cells(by_study) == ["review.saved", "study.image_viewed"]
    assert '<span class="detail-item"><span class="muted">image</span> heatmap</span>' in by_study
    assert '<span class="detail-item"><span class="muted">verdict</span> agree</span>' in by_study
    assert f'<span class="mono small">{study.code}</span>' in by_study  # whole, where it was cut to 12
    assert action_cells(by_key) == ["study.viewed"]
    assert "Key: EMR St Mary" in by_key
    page = client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()
    assert f'<a href="{AUDIT}?study={study.code}">Who opened or changed this study</a>' in page
    doctors_page = client_for(doctor).get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()
    assert "Who opened or changed this study" not in doctors_page


def test_a_study_code_that_is_not_one_is_400_in_words_and_a_pasted_address_is_taken(
    client_for, hospital_admin, doctor, make_study, hospital_a
):
    study = make_study(hospital_a)
    audit.record(Action.STUDY_VIEWED, actor=doctor, hospital=hospital_a, target=study)
    client = client_for(hospital_admin)

    refused = client.get(AUDIT, {"study": "MRN-1234"}, **HX)
    pasted = client.get(AUDIT, {"study": f"https://pleura.example/studies/{study.code}/"}, **HX)
    bare = client.get(AUDIT, {"study": study.code.hex}, **HX)

    assert refused.status_code == 400
    assert (
        "<p>Study code: Paste a study&#x27;s code, or the address of its page (…/studies/&lt;code&gt;/).</p>"
    ) in refused.content.decode()
    assert action_cells(pasted.content.decode()) == ["study.viewed"]
    assert action_cells(bare.content.decode()) == ["study.viewed"]  # 32 hex digits, as a UUID may be written


def test_a_person_filter_shows_what_was_done_about_them_too(client_for, hospital_admin, doctor, hospital_a):
    """A dismissed doctor's tries to sign back in are by no one, about them: the filter by
    person answered "nothing" (operator review)."""
    audit.record(Action.LOGIN_FAILED, hospital=hospital_a, target=doctor, outcome="failure")
    audit.record(Action.MEMBERSHIP_DEACTIVATED, actor=hospital_admin, hospital=hospital_a, target=doctor)

    html = client_for(hospital_admin).get(AUDIT, {"user": str(doctor.code)}, **HX).content.decode()

    assert action_cells(html) == ["membership.deactivated", "auth.login_failed"]


def test_the_lists_that_showed_a_study_are_found_by_its_code(
    client_for, hospital_admin, doctor, key_a, make_study, hospital_a
):
    """A worklist page, an EMR's page of results and the admin's list each carry the
    patient's details and result of every row, and their events held only a count: "who saw
    patient X's study?" missed every list that showed it (open at the twenty-fifth stop)."""
    shown, other = make_study(hospital_a, accession_number="ACC-1"), make_study(hospital_a, accession_number="ACC-2")
    client_for(doctor).get(reverse("diagnostics:worklist"))
    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
    assert emr.get("/api/v1/studies/").status_code == 200
    assert emr.post("/api/v1/studies/search/", {"accession_number": "ACC-2"}, format="json").json()["count"] == 1
    admin = client_for(hospital_admin)
    assert admin.get("/admin/diagnostics/study/").status_code == 200

    html = admin.get(AUDIT, {"study": str(shown.code)}, **HX).content.decode()

    # The worklist, the EMR's list and the admin's list; not the search that found the other.
    assert action_cells(html) == ["study.listed", "study.listed", "study.listed"]
    assert re.findall(r"Key: EMR St Mary&#x27;s|via</span> admin", html) == [
        "via</span> admin",
        "Key: EMR St Mary&#x27;s",
    ]
    assert '<span class="muted">count</span> 2' in html
    assert str(other.code) not in html  # the codes stay out of the detail shown


def test_a_day_filters_the_log_by_a_range_of_times_an_index_serves(client_for, hospital_admin):
    """As `created_at__date`, every event's time was converted to find the day's: one day
    of the log read 2.2 million events (1 s; scale review)."""
    client = client_for(hospital_admin)
    with CaptureQueriesContext(connection) as queries:
        client.get(AUDIT, {"date_from": "2026-11-23", "date_to": "2026-11-24"}, **HX)

    listed = [q["sql"] for q in queries.captured_queries if 'FROM "hospital_auditevent"' in q["sql"]]
    converted = [sql for sql in listed if "cast_date" in sql or "AT TIME ZONE" in sql]
    assert (len(listed) > 0, converted) == (True, [])


@pytest.mark.parametrize("path", [AUDIT, reverse("diagnostics:worklist")])
def test_the_first_and_last_days_of_the_calendar_as_bounds_are_no_error(
    client_for, hospital_admin, doctor, hospital_a, path
):
    """The last one's day after overflowed, and so did the first one's start in UTC for a
    hospital east of it: each a 500 (diff reviews)."""
    hospital_a.time_zone = "Asia/Tokyo"
    hospital_a.save()
    client = client_for(hospital_admin if path == AUDIT else doctor)

    answers = [
        client.get(path, {"date_from": first, "date_to": last}).status_code
        for first, last in [("2026-01-01", "9999-12-31"), ("0001-01-01", "2026-01-01"), ("0001-01-01", "9999-12-31")]
    ]

    assert answers == [200, 200, 200]
