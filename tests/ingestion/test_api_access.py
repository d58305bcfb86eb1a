"""The study API as callers see it: tenant isolation for every endpoint with session and
key callers, the detail resource, list pagination and filters, images, throttling and
the audit of every read."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from PIL import Image
from rest_framework.pagination import PageNumberPagination
from rest_framework.test import APIClient

from diagnostics.models import Prediction, Review, Study
from diagnostics.reviews import save_review
from diagnostics.services import ingest_upload
from hospital.api import IntegrationKeyThrottle
from hospital.models import AuditEvent, IntegrationKey
from mlcore.models import ModelVersion
from tests.ingestion.conftest import (
    CR_CHEST,
    NORMAL_JPEG,
    PNEUMONIA_PNG,
    STUDIES_URL,
    TIBIA,
    decode_png,
    make_dicom,
    post_file,
)


def rgba_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 4), 128, dtype=np.uint8), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def model_version(name: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name, architecture="resnet18", image_size=224, weights_path=f"{name}.pt", weights_sha256="0" * 64,
        threshold=0.42, **fields,
    )  # fmt: skip


def add_prediction(study: Study, version: ModelVersion, *, probability: float, is_shadow: bool = False) -> Prediction:
    prediction = Prediction(
        study=study, model_version=version, probability=probability, threshold=version.threshold,
        label="pneumonia" if probability >= version.threshold else "normal", device="cpu", latency_ms=12.5,
        is_shadow=is_shadow,
    )  # fmt: skip
    prediction.heatmap.save("heatmap.png", ContentFile(rgba_png(study.columns, study.rows)), save=False)
    prediction.save()
    return prediction


@pytest.fixture
def study_a(hospital_a, doctor) -> Study:
    study, _ = ingest_upload(
        hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.PORTAL, user=doctor,
        accession_number="ACC-A1", patient_id="MRN-A1",
    )  # fmt: skip
    return study


@pytest.fixture
def completed_a(study_a, radiologist) -> Study:
    active = model_version("densenet-v2", status=ModelVersion.Status.ACTIVE)
    shown = add_prediction(study_a, active, probability=0.9)
    add_prediction(study_a, model_version("candidate-v3", shadow=True), probability=0.1, is_shadow=True)
    Study.objects.filter(pk=study_a.pk).update(status=Study.Status.COMPLETED, completed_at=shown.created_at)
    Review.objects.create(study=study_a, radiologist=radiologist, prediction=shown, verdict="agree",
                          correct_label="pneumonia", note="Right lower lobe consolidation.")  # fmt: skip
    study_a.refresh_from_db()
    return study_a


@pytest.fixture
def caller(request, doctor, radiologist, hospital_admin, outsider, superuser, key_a, key_b, shared_radiologist):
    """API clients by name, for parametrized access tests."""

    def make(name: str) -> APIClient:
        client = APIClient()
        users = {"doctor": doctor, "radiologist": radiologist, "hospital_admin": hospital_admin,
                 "outsider": outsider, "superuser": superuser}  # fmt: skip
        if name in users:
            client.force_login(users[name])
        elif name == "key_a":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
        elif name == "key_b":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b[1]}")
        elif name == "revoked_key":
            key_a[0].revoke()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
        elif name == "bad_key":
            client.credentials(HTTP_AUTHORIZATION="Bearer not-a-key")
        return client

    return make


READERS = ["doctor", "radiologist", "hospital_admin", "key_a"]
OUTSIDERS = ["outsider", "key_b", "superuser"]
UNAUTHENTICATED = ["anonymous", "revoked_key", "bad_key"]
READ_PATHS = ["", "image", "heatmap"]


def url(study: Study, suffix: str = "") -> str:
    return f"{STUDIES_URL}{study.code}/{suffix}"


@pytest.mark.parametrize("who", READERS)
@pytest.mark.parametrize("suffix", READ_PATHS)
def test_members_and_the_hospital_key_read_every_endpoint(who, suffix, caller, completed_a):
    response = caller(who).get(url(completed_a, suffix))
    assert response.status_code == 200
    if suffix == "image":
        assert response["Content-Type"] == "image/png"
        assert response["Cache-Control"] == "private, no-store"
        completed_a.refresh_from_db()  # the first request drew the picture and stored it
        with completed_a.display_image.open("rb") as handle:
            assert b"".join(response.streaming_content) == handle.read()
    elif suffix == "heatmap":
        shown = completed_a.predictions.get(is_shadow=False)
        with shown.heatmap.open("rb") as handle:
            assert b"".join(response.streaming_content) == handle.read()
    else:
        assert response.json()["id"] == str(completed_a.code)


@pytest.mark.parametrize(
    ("who", "path", "accept"),
    [
        ("key_a", "", "application/json"),
        ("doctor", "", "text/html"),  # the browsable API, in a shared workstation's browser
        ("key_a", "detail", "application/json"),
        ("key_a", "heatmap", "*/*"),
        ("anonymous", "", "application/json"),
    ],
)
def test_api_answers_are_kept_by_no_cache(who, path, accept, caller, completed_a):
    """They carry accession numbers and review notes; without Cache-Control a browser kept
    them on disk after logout (PHI review)."""
    target = STUDIES_URL if not path else url(completed_a, "" if path == "detail" else path)
    response = caller(who).get(target, HTTP_ACCEPT=accept)
    assert set(response["Cache-Control"].replace(" ", "").split(",")) >= {"private", "no-store"}
    if who == "doctor":
        assert "ACC-A1" in response.content.decode()


@pytest.mark.parametrize("who", OUTSIDERS)
@pytest.mark.parametrize("suffix", READ_PATHS)
def test_outsiders_get_404_on_every_endpoint_and_their_try_is_kept_in_the_owners_trail(
    who, suffix, caller, completed_a, hospital_a
):
    """Nothing is shown or recorded as seen; the try itself is recorded where the study's
    hospital reads it (it left no trace at all: audit review). A platform account with no
    hospital is turned away before any study is looked up."""
    client = caller(who)
    seen_before = set(AuditEvent.objects.values_list("pk", flat=True))
    response = client.get(url(completed_a, suffix), HTTP_ACCEPT="image/png" if suffix else "application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "MRN-A1" not in response.content.decode()
    tries = AuditEvent.objects.exclude(pk__in=seen_before)
    expected = [] if who == "superuser" else [("access.denied", "denied", hospital_a.pk, str(completed_a.code))]
    assert [(e.action, e.outcome, e.hospital_id, e.target_id) for e in tries] == expected
    if who != "superuser":
        assert tries.get().detail == {"path": url(completed_a, suffix), "via": "api"}


@pytest.mark.parametrize("who", UNAUTHENTICATED)
@pytest.mark.parametrize("suffix", READ_PATHS)
def test_unauthenticated_callers_get_401_on_every_endpoint(who, suffix, caller, completed_a):
    response = caller(who).get(url(completed_a, suffix))
    assert response.status_code == 401
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("who", UNAUTHENTICATED)
def test_unauthenticated_callers_cannot_list_or_upload(who, caller, completed_a, stored):
    before = stored()
    client = caller(who)
    assert client.get(STUDIES_URL).status_code == 401
    assert post_file(client, PNEUMONIA_PNG.read_bytes()).status_code == 401
    assert stored() == before


def test_revoked_key_message(caller, completed_a):
    response = caller("revoked_key").get(url(completed_a))
    assert response.json() == {"detail": UNUSABLE_KEY}
    assert response["WWW-Authenticate"] == 'Bearer realm="pleura"'


UNUSABLE_KEY = (
    "This integration key is not valid, has expired or has been revoked: "
    "ask your hospital's Pleura admin for a new one."
)


def test_an_expired_key_is_refused_from_that_moment_and_its_hospital_is_told(key_client, key_a, completed_a):
    """Keys lived until revoked: a hospital's rule for how long a credential lives had no
    place (EMR review)."""
    from datetime import timedelta

    from django.utils import timezone

    key, raw = key_a
    IntegrationKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() + timedelta(minutes=5))
    assert key_client(raw).get(url(completed_a)).status_code == 200
    IntegrationKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = key_client(raw).get(url(completed_a))

    assert (response.status_code, response.json()) == (401, {"detail": UNUSABLE_KEY})
    denied = AuditEvent.objects.filter(action="access.denied", hospital=key.hospital).last()
    assert denied.detail["reason"] == "expired key"


def test_key_last_use_is_written_at_most_once_a_minute(caller, key_a, completed_a):
    key, _ = key_a
    client = caller("key_a")
    client.get(url(completed_a))
    key.refresh_from_db()
    first_use = key.last_used_at
    assert first_use is not None
    client.get(url(completed_a))
    key.refresh_from_db()
    assert key.last_used_at == first_use
    IntegrationKey.objects.filter(pk=key.pk).update(last_used_at=first_use - timedelta(seconds=61))
    client.get(url(completed_a))
    key.refresh_from_db()
    assert key.last_used_at > first_use


@pytest.mark.parametrize(("who", "count"), [("doctor", 1), ("key_a", 1), ("outsider", 0), ("key_b", 0)])
def test_list_holds_only_the_callers_hospital(who, count, caller, completed_a, hospital_b):
    ingest_upload(hospital=hospital_b, data=TIBIA.read_bytes(), source=Study.Source.API)
    response = caller(who).get(STUDIES_URL)
    assert response.status_code == 200
    ids = [item["id"] for item in response.json()["results"]]
    expected_hospital = completed_a.hospital if who in ("doctor", "key_a") else hospital_b
    assert ids == [str(s.code) for s in Study.objects.filter(hospital=expected_hospital)]
    assert len(ids) == (count if expected_hospital == completed_a.hospital else 1)


def test_superuser_without_membership_gets_404_on_the_list(caller, completed_a):
    assert caller("superuser").get(STUDIES_URL).status_code == 404


def test_hospital_admin_may_read_but_not_upload(caller, stored):
    before = stored()
    response = post_file(caller("hospital_admin"), PNEUMONIA_PNG.read_bytes())
    assert response.status_code == 403
    assert response.json() == {"detail": "Your role does not allow this."}
    assert stored() == before


@pytest.mark.parametrize("who", ["doctor", "radiologist", "key_a"])
def test_uploaders_store_into_their_own_hospital(who, caller, hospital_a):
    response = post_file(caller(who), NORMAL_JPEG.read_bytes())
    assert response.status_code == 202
    assert Study.objects.get(code=response.json()["id"]).hospital == hospital_a


def test_outsider_upload_lands_in_the_outsiders_hospital(caller, hospital_b):
    response = post_file(caller("outsider"), CR_CHEST.read_bytes())
    assert response.status_code == 202
    assert Study.objects.get(code=response.json()["id"]).hospital == hospital_b


def test_detail_resource_shows_the_latest_non_shadow_prediction_reviews_and_warnings(caller, completed_a):
    shown = completed_a.predictions.get(is_shadow=False)
    review = completed_a.reviews.get()
    body = caller("key_a").get(url(completed_a)).json()
    assert body == {
        "id": str(completed_a.code),
        "status": "completed",
        "failure_reason": "",
        "failure_code": "",
        "accession_number": "ACC-A1",
        "study_instance_uid": "1.2.392.200036.9125.0.199302241758.16",
        "series_instance_uid": "1.2.392.200036.9125.0.199302241758.16",
        "sop_instance_uid": "1.2.392.200036.9125.0.19950720112207",
        "created_at": completed_a.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": completed_a.updated_at.isoformat().replace("+00:00", "Z"),
        "image_url": f"/api/v1/studies/{completed_a.code}/image",
        "prediction": {
            "label": "pneumonia",
            "probability": 0.9,
            "threshold": 0.42,
            "model_version": "densenet-v2",
            "completed_at": shown.created_at.isoformat().replace("+00:00", "Z"),
            "heatmap_url": f"/api/v1/studies/{completed_a.code}/heatmap",
        },
        "reviews": [
            {
                "id": str(review.code),
                "radiologist": "radiologist@stmarys.example",
                "verdict": "agree",
                "correct_label": "pneumonia",
                "note": "Right lower lobe consolidation.",
                "created_at": review.created_at.isoformat().replace("+00:00", "Z"),
                "updated_at": review.updated_at.isoformat().replace("+00:00", "Z"),
            }
        ],
        "warnings": [],
        "withdrawn_at": None,
        "withdrawal_reason": "",
    }
    assert "MRN-A1" not in str(body)


def test_failed_and_flagged_study_shows_reason_and_warnings(caller, hospital_a):
    study, _ = ingest_upload(hospital=hospital_a, data=TIBIA.read_bytes(), source=Study.Source.API)
    Study.objects.filter(pk=study.pk).update(
        status="failed", failure_code="undecodable", failure_reason="The pixel data could not be decoded."
    )
    body = caller("doctor").get(url(study)).json()
    assert (body["status"], body["failure_code"], body["failure_reason"]) == (
        "failed", "undecodable", "The pixel data could not be decoded.",
    )  # fmt: skip
    assert body["prediction"] is None
    assert body["warnings"] == [
        {
            "code": "not_chest",
            "message": "The body part examined is not the chest: the model is validated on chest radiographs only.",
        },
        {
            "code": "adult",
            "message": (
                "The patient is an adult: the model learned from children's chest radiographs (aged 1 to 5) only."
            ),
        },
    ]


def test_heatmap_is_404_until_a_shown_prediction_exists(caller, study_a):
    add_prediction(study_a, model_version("shadow-only", shadow=True), probability=0.3, is_shadow=True)
    response = caller("doctor").get(url(study_a, "heatmap"), HTTP_ACCEPT="image/png")
    assert response.status_code == 404
    assert response.json() == {"detail": "This study has no heatmap yet: it is still being analysed."}


def test_a_failed_studys_heatmap_is_404_without_a_yet(caller, study_a):
    """ "No heatmap yet" told the EMR one would come (EMR review)."""
    Study.objects.filter(pk=study_a.pk).update(status=Study.Status.FAILED)
    response = caller("key_a").get(url(study_a, "heatmap"), HTTP_ACCEPT="image/png")
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "This study has no heatmap: its analysis failed."},
    )


def test_image_is_the_stored_display_png(caller, study_a):
    response = caller("doctor").get(url(study_a, "image"))
    image = decode_png(b"".join(response.streaming_content))
    assert image.shape == (440, 440)


def test_unknown_and_malformed_ids_are_json_404(caller, completed_a):
    client = caller("doctor")
    for path in (f"{STUDIES_URL}not-a-uuid/", f"{STUDIES_URL}00000000-0000-0000-0000-000000000000/image"):
        response = client.get(path)
        assert response.status_code == 404
        assert set(response.json()) == {"detail"}


def _studies(hospital, count: int) -> list[Study]:
    created = []
    for index in range(count):
        data = PNEUMONIA_PNG.read_bytes() if index % 2 else NORMAL_JPEG.read_bytes()
        study, _ = ingest_upload(hospital=hospital, data=data, source=Study.Source.API, accession_number=f"ACC-{index}")
        created.append(study)
    return created


def test_list_is_newest_first_and_paginated(caller, hospital_a, monkeypatch):
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)
    studies = _studies(hospital_a, 3)
    client = caller("key_a")
    first = client.get(STUDIES_URL).json()
    assert [item["id"] for item in first["results"]] == [str(studies[2].code), str(studies[1].code)]
    assert first["count"] == 3
    assert first["next"] == f"http://testserver{STUDIES_URL}?page=2"
    second = client.get(first["next"]).json()
    assert [item["id"] for item in second["results"]] == [str(studies[0].code)]
    assert second["next"] is None


@pytest.mark.parametrize("since", ["2030-01-02", "2030-01-02T00:00:00", "2030-01-02T00:00:00Z"])
def test_a_date_or_time_without_a_zone_in_updated_since_is_utc_whatever_the_servers_zone(
    caller, hospital_a, settings, since
):
    """Read in TIME_ZONE (New York), a feed starting from a date missed five hours of changes (EMR review)."""
    settings.TIME_ZONE = "America/New_York"
    studies = _studies(hospital_a, 2)
    moments = [datetime(2030, 1, 1, 23, 59, tzinfo=UTC), datetime(2030, 1, 2, 0, 1, tzinfo=UTC)]
    for study, moment in zip(studies, moments, strict=True):
        Study.objects.filter(pk=study.pk).update(updated_at=moment)

    response = caller("key_a").get(STUDIES_URL, {"updated_since": since})

    assert [item["id"] for item in response.json()["results"]] == [str(studies[1].code)]


def test_list_filters_by_status_accession_and_updated_since(caller, hospital_a):
    studies = _studies(hospital_a, 3)
    Study.objects.filter(pk=studies[0].pk).update(status="completed")
    Study.objects.filter(pk=studies[1].pk).update(updated_at=timezone.now() - timedelta(days=3))
    Study.objects.filter(pk=studies[2].pk).update(updated_at=timezone.now() - timedelta(days=3))
    client = caller("doctor")

    def ids(query: str) -> list[str]:
        response = client.get(STUDIES_URL + query)
        assert response.status_code == 200
        return [item["id"] for item in response.json()["results"]]

    assert ids("?status=completed") == [str(studies[0].code)]
    assert ids("?status=queued") == [str(studies[2].code), str(studies[1].code)]
    assert ids("?accession_number=ACC-1") == [str(studies[1].code)]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids("?updated_since=" + since.replace("+", "%2B")) == [str(studies[0].code)]
    # Oldest change first: studies[1] and [2] changed three days ago, [1] a moment before [2].
    assert ids("?updated_since=" + (timezone.now() - timedelta(days=5)).date().isoformat()) == [
        str(studies[1].code),
        str(studies[2].code),
        str(studies[0].code),
    ]


def test_changes_read_page_by_page_miss_none_that_change_meanwhile(caller, hospital_a, monkeypatch):
    """Paged by number, newest first, a study changing while the EMR read the pages pushed
    an unread one back onto a page already read, and it was missed for good (API review)."""
    from diagnostics.api.views import ChangesPagination

    monkeypatch.setattr(ChangesPagination, "page_size", 2)
    studies = _studies(hospital_a, 4)
    client = caller("key_a")
    since = (timezone.now() - timedelta(minutes=5)).isoformat()

    first = client.get(STUDIES_URL, {"updated_since": since}).json()
    assert "count" not in first
    read = [item["id"] for item in first["results"]]
    assert read == [str(studies[0].code), str(studies[1].code)]
    Study.objects.filter(pk=studies[0].pk).update(status="completed", updated_at=timezone.now())  # its result

    while first["next"]:
        first = client.get(first["next"]).json()
        read += [item["id"] for item in first["results"]]

    assert read == [str(s.code) for s in (studies[0], studies[1], studies[2], studies[3], studies[0])]


def test_changes_of_one_moment_read_page_by_page_miss_none(caller, hospital_a, monkeypatch):
    """A batch's results share one updated_at; DRF's cursor skipped by position within it,
    so a study of the batch changing meanwhile made an unread one be skipped (diff review)."""
    from diagnostics.api.views import ChangesPagination

    monkeypatch.setattr(ChangesPagination, "page_size", 2)
    studies = _studies(hospital_a, 4)
    one_moment = timezone.now() - timedelta(minutes=10)
    Study.objects.update(updated_at=one_moment)
    by_code = sorted(studies, key=lambda s: str(s.code))  # the order within one moment
    client = caller("key_a")

    page = client.get(STUDIES_URL, {"updated_since": (one_moment - timedelta(minutes=1)).isoformat()}).json()
    read = [item["id"] for item in page["results"]]
    Study.objects.filter(pk=by_code[0].pk).update(updated_at=timezone.now())  # a review, say
    while page["next"]:
        page = client.get(page["next"]).json()
        read += [item["id"] for item in page["results"]]

    assert read == [str(s.code) for s in (*by_code, by_code[0])]


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        (f"{STUDIES_URL}?page=abc", "page must be the number of a page there is, as the `next` and `previous` links "
         "give them."),
        (f"{STUDIES_URL}?page=999", "page must be the number of a page there is, as the `next` and `previous` links "
         "give them."),
        (f"{STUDIES_URL}?cursor=zzz", "cursor pages the change feed: send it with updated_since, as next does."),
        (f"{STUDIES_URL}?updated_since=2026-01-01&page=2",
         "The change feed is paged by cursor: follow `next`, with no page."),
    ],
)  # fmt: skip
def test_a_page_that_is_not_one_is_400_not_404_or_ignored(caller, study_a, url, detail):
    """A 404 "Invalid page." read as "no such study", and the other kind of page's
    parameter was ignored (EMR review)."""
    response = caller("key_a").get(url)
    assert (response.status_code, response.json()) == (400, {"detail": detail})


def test_a_search_page_that_is_not_one_is_400(caller, study_a):
    response = caller("key_a").post(f"{SEARCH_URL}?page=7", {"accession_number": "ACC-A1"}, format="json")
    assert (response.status_code, response.json()) == (
        400, {"detail": "page must be the number of a page there is, as the `next` and `previous` links give them."},
    )  # fmt: skip


@pytest.mark.parametrize(
    "forged",
    [
        "not-a-cursor",
        # A time without a zone, and times at the ends of the calendar (500 on SQLite).
        "2026-01-01T00:00:00|5b0c6a5e-1c4e-4f2e-9b3a-2f0e6c1d7a10",
        "0001-01-01T00:00:00+01:00|5b0c6a5e-1c4e-4f2e-9b3a-2f0e6c1d7a10",
        "9999-12-31T23:59:59-01:00|5b0c6a5e-1c4e-4f2e-9b3a-2f0e6c1d7a10",
    ],
)
def test_a_cursor_pleura_did_not_give_is_a_clear_400(forged, caller):
    cursor = base64.urlsafe_b64encode(forged.encode()).decode()
    response = caller("key_a").get(STUDIES_URL, {"updated_since": "2026-01-01", "cursor": cursor})
    assert (response.status_code, response.json()) == (
        400,
        {"detail": "cursor is not one Pleura gave: follow the `next` link."},
    )


def test_a_review_saved_after_the_prediction_is_read_back_as_a_change(caller, completed_a, radiologist):
    """An EMR reads what changed since its last read with `updated_since`: a radiologist's
    correction after the prediction must come back that way, as the prediction did."""
    Study.objects.filter(pk=completed_a.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    client = caller("key_a")
    last_read = (timezone.now() - timedelta(minutes=30)).isoformat()
    assert client.get(STUDIES_URL, {"updated_since": last_read}).json()["results"] == []

    save_review(study=completed_a, radiologist=radiologist, verdict="disagree", correct_label="normal")

    changed = client.get(STUDIES_URL, {"updated_since": last_read}).json()["results"]
    assert [(study["id"], [r["verdict"] for r in study["reviews"]]) for study in changed] == [
        (str(completed_a.code), ["disagree"])
    ]
    assert parse_datetime(changed[0]["updated_at"]) > parse_datetime(last_read)


@pytest.mark.parametrize(
    ("query", "body", "detail"),
    [
        ("?accession_number=NOPE-XYZ", None,
         "The search reads its filters from the body, not the URL (accession_number): send them as JSON or a form."),
        ("?status=failed&foo=1", {"accession_number": "ACC-A1"},
         "The search reads its filters from the body, not the URL (foo, status): send them as JSON or a form."),
        ("", {}, "Give at least one filter (accession_number, status, study_instance_uid, sop_instance_uid): to read "
         "every study, GET /api/v1/studies/."),
        ("", None, "Give at least one filter (accession_number, status, study_instance_uid, sop_instance_uid): to "
         "read every study, GET /api/v1/studies/."),
    ],
)  # fmt: skip
def test_a_search_with_its_filters_in_the_url_or_none_at_all_is_400_not_every_study(
    caller, study_a, query, body, detail
):
    """Both answered every study of the hospital, newest first (EMR review)."""
    response = caller("key_a").post(f"{SEARCH_URL}{query}", body, format="json")
    assert (response.status_code, response.json()) == (400, {"detail": detail})


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("?status=done", "status must be one of: queued, processing, completed, failed."),
        ("?updated_since=yesterday", "updated_since must be an ISO 8601 date or date-time."),
        ("?updated_since=2025-13-45", "updated_since must be an ISO 8601 date or date-time."),
        # No UTC time exists for these: the database adapter raised OverflowError (500).
        ("?updated_since=0001-01-01T00:00:00%2B01:00", "updated_since is outside the dates Pleura can compare."),
        ("?updated_since=9999-12-31T23:59:59-01:00", "updated_since is outside the dates Pleura can compare."),
        # A NUL made PostgreSQL refuse the query (500).
        (
            "?accession_number=ACC%001",
            "The accession number (accession_number) may contain printable characters only, no control characters.",
        ),
        ("?accession_number=" + "A" * 65, "The accession number (accession_number) must be at most 64 characters."),
    ],
)
def test_bad_filters_are_400_with_a_message(query, detail, caller):
    response = caller("doctor").get(STUDIES_URL + query)
    assert response.status_code == 400
    assert response.json() == {"detail": detail}


def test_list_query_count_does_not_grow_with_rows(caller, hospital_a, radiologist):
    client = caller("key_a")
    version = model_version("v1", status=ModelVersion.Status.ACTIVE)
    studies = _studies(hospital_a, 2)
    for study in studies:
        add_prediction(study, version, probability=0.7)
        Review.objects.create(study=study, radiologist=radiologist, verdict="agree", correct_label="pneumonia")
    client.get(STUDIES_URL)  # the key's first use of the minute also writes its last_used_at
    with CaptureQueriesContext(connection) as two:
        assert client.get(STUDIES_URL).status_code == 200
    for study in _studies(hospital_a, 4):
        add_prediction(study, version, probability=0.2)
        Review.objects.create(study=study, radiologist=radiologist, verdict="agree", correct_label="normal")
    with CaptureQueriesContext(connection) as six:
        response = client.get(STUDIES_URL)
    assert len(response.json()["results"]) == 6
    assert len(six.captured_queries) == len(two.captured_queries)


def test_every_read_is_audited_with_the_caller(caller, completed_a, key_a, doctor):
    caller("key_a").get(STUDIES_URL)
    caller("key_a").get(url(completed_a))
    caller("doctor").get(url(completed_a, "image"))
    caller("doctor").get(url(completed_a, "heatmap"))
    listed = AuditEvent.objects.get(action="study.listed")
    assert (listed.actor_key, listed.hospital, listed.detail) == (
        key_a[0],
        completed_a.hospital,
        {"count": 1, "studies": [str(completed_a.code)]},
    )
    viewed = AuditEvent.objects.get(action="study.viewed")
    assert (viewed.actor_key, viewed.target_id, viewed.detail) == (key_a[0], str(completed_a.code), {"via": "api"})
    images = AuditEvent.objects.filter(action="study.image_viewed").order_by("id")
    assert [(e.actor_user, e.detail) for e in images] == [
        (doctor, {"image": "display", "via": "api"}),
        (doctor, {"image": "heatmap", "via": "api"}),
    ]


def test_integration_keys_are_throttled_per_key_and_sessions_are_not(caller, monkeypatch):
    monkeypatch.setattr(IntegrationKeyThrottle, "rate", "3/min", raising=False)
    key_client, other_key, doctor = caller("key_a"), caller("key_b"), caller("doctor")
    assert [key_client.get(STUDIES_URL).status_code for _ in range(3)] == [200, 200, 200]
    throttled = key_client.get(STUDIES_URL)
    assert throttled.status_code == 429
    assert throttled.json()["detail"].startswith("Request was throttled.")
    assert other_key.get(STUDIES_URL).status_code == 200
    assert [doctor.get(STUDIES_URL).status_code for _ in range(5)] == [200] * 5


def test_concurrent_requests_of_one_key_are_each_counted(monkeypatch):
    monkeypatch.setattr(IntegrationKeyThrottle, "rate", "5/min", raising=False)
    # Inside one window (1,000,020 to 1,000,080 s), whatever the clock says.
    monkeypatch.setattr(IntegrationKeyThrottle, "timer", lambda self: 1_000_030.0)
    request = SimpleNamespace(auth=IntegrationKey(pk=987_654))  # only its pk names the counter
    start_together = threading.Barrier(12)

    def ask(_) -> tuple[bool, float]:
        throttle = IntegrationKeyThrottle()
        start_together.wait()
        return throttle.allow_request(request, view=None), throttle.wait()

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(ask, range(12)))

    assert [allowed for allowed, _ in answers].count(True) == 5
    assert {wait for _, wait in answers} == {50.0}


@pytest.mark.parametrize("path", ["/api/v1/study/", "/api/v2/studies/", "/dicomweb/nothing"])
def test_a_path_nothing_answers_is_a_json_404_for_machines(path, caller, client, completed_a):
    """An EMR's mistyped path got the portal's HTML page (API review)."""
    from config.errors import API_NOT_FOUND

    response = caller("key_a").get(path)
    assert (response.status_code, response["Content-Type"], response.json()) == (
        404,
        "application/json",
        {"detail": API_NOT_FOUND},
    )
    portal = client.get("/no-such-page/")
    assert (portal.status_code, portal["Content-Type"].split(";")[0]) == (404, "text/html")


SEARCH_URL = f"{STUDIES_URL}search/"


def test_search_finds_studies_by_an_accession_number_that_never_enters_a_url(caller, hospital_a, monkeypatch):
    """In the query string of the list, an accession number is kept by every proxy and log
    that keeps URLs, and DRF repeats it in `next` (PHI review): the search takes it in the body."""
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)
    same = [
        ingest_upload(hospital=hospital_a, data=data, source=Study.Source.API, accession_number="ACC-PHI-5555")[0]
        for data in (PNEUMONIA_PNG.read_bytes(), NORMAL_JPEG.read_bytes(), CR_CHEST.read_bytes())
    ]
    _studies(hospital_a, 2)  # other accession numbers
    client = caller("key_a")

    first = client.post(SEARCH_URL, {"accession_number": "ACC-PHI-5555"}, format="json")
    second = client.post(first.json()["next"], {"accession_number": "ACC-PHI-5555"}, format="json")

    assert (first.status_code, second.status_code) == (200, 200)
    assert [item["id"] for item in first.json()["results"] + second.json()["results"]] == [
        str(study.code) for study in reversed(same)
    ]
    assert (first.json()["count"], first.json()["next"], second.json()["next"]) == (
        3, f"http://testserver{SEARCH_URL}?page=2", None,
    )  # fmt: skip
    listed = AuditEvent.objects.filter(action="study.listed").order_by("id")
    assert [(event.hospital, event.detail["count"], event.detail["studies"]) for event in listed] == [
        (hospital_a, 2, [str(same[2].code), str(same[1].code)]),
        (hospital_a, 1, [str(same[0].code)]),
    ]


@pytest.mark.parametrize("who", READERS)
def test_every_role_that_reads_studies_may_search_them(caller, study_a, who):
    response = caller(who).post(SEARCH_URL, {"accession_number": "ACC-A1", "status": "queued"}, format="json")
    assert (response.status_code, [item["id"] for item in response.json()["results"]]) == (200, [str(study_a.code)])


def test_another_hospitals_key_finds_nothing_by_this_hospitals_accession_number(caller, study_a):
    response = caller("key_b").post(
        SEARCH_URL, "accession_number=ACC-A1", content_type="application/x-www-form-urlencoded"
    )
    assert (response.status_code, response.json()["count"], response.json()["results"]) == (200, 0, [])


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"accession_number": 5555}, "accession_number must be a string."),
        (["ACC-A1"], "The body must be an object of filters."),
        ({"accession_number": "ACC\u00001"},
         "The accession number (accession_number) may contain printable characters only, no control characters."),
        ({"status": "done"}, "status must be one of: queued, processing, completed, failed."),
    ],
)  # fmt: skip
def test_a_search_body_pleura_cannot_read_is_400_with_a_message(caller, body, detail):
    response = caller("doctor").post(SEARCH_URL, body, format="json")
    assert (response.status_code, response.json()) == (400, {"detail": detail})


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"accesion_number": "NOPE-999"},
         "Pleura has no filter named accesion_number: the names it reads here are accession_number, status, "
         "study_instance_uid, sop_instance_uid."),
        ({"accession_number": ""}, "accession_number is empty: give it a value, or leave it out to mean any."),
        ({"accession_number": None}, "accession_number is empty: give it a value, or leave it out to mean any."),
        ({"study_instance_uid": "1.2.3\n"}, "study_instance_uid is not a DICOM UID (digits and dots, at most 64)."),
    ],
)  # fmt: skip
def test_a_misspelt_or_empty_filter_is_400_not_every_study_of_the_hospital(caller, study_a, body, detail):
    """Read as no filter, each answered every study, newest first: an EMR takes the first for its patient's."""
    response = caller("key_a").post(SEARCH_URL, body, format="json")
    assert (response.status_code, response.json()) == (400, {"detail": detail})


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("updated_sinse=2030-01-01",
         "Pleura has no filter named updated_sinse: the names it reads here are status, accession_number, "
         "updated_since, page, cursor, format."),
        ("sop_instance_uid=1.2.3",
         "Pleura has no filter named sop_instance_uid: the names it reads here are status, accession_number, "
         "updated_since, page, cursor, format."),
        ("status=", "status is empty: give it a value, or leave it out to mean any."),
        ("updated_since=", "updated_since is empty: give the largest updated_at read, less a minute."),
    ],
)  # fmt: skip
def test_the_list_refuses_a_parameter_it_does_not_read_or_an_empty_filter(caller, study_a, query, detail):
    response = caller("key_a").get(f"{STUDIES_URL}?{query}")
    assert (response.status_code, response.json()) == (400, {"detail": detail})


def test_a_search_form_posted_with_a_session_may_carry_its_csrf_token(caller, study_a):
    response = caller("doctor").post(
        SEARCH_URL, "accession_number=ACC-A1&csrfmiddlewaretoken=abc", content_type="application/x-www-form-urlencoded"
    )
    assert (response.status_code, [item["id"] for item in response.json()["results"]]) == (200, [str(study_a.code)])


def test_an_emr_finds_each_view_of_a_dicom_study_by_its_own_uids(caller, hospital_a):
    study, _ = ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    ingest_upload(hospital=hospital_a, data=NORMAL_JPEG.read_bytes(), source=Study.Source.API)
    client = caller("key_a")

    by_study = client.post(SEARCH_URL, {"study_instance_uid": study.study_instance_uid}, format="json").json()
    by_instance = client.post(SEARCH_URL, {"sop_instance_uid": study.sop_instance_uid}, format="json").json()
    elsewhere = caller("key_b").post(SEARCH_URL, {"sop_instance_uid": study.sop_instance_uid}, format="json").json()

    assert [item["id"] for item in by_study["results"]] == [str(study.code)]
    assert [(item["id"], item["sop_instance_uid"]) for item in by_instance["results"]] == [
        (str(study.code), "1.2.392.200036.9125.0.19950720112207")
    ]
    assert elsewhere["results"] == []


def test_a_filter_named_twice_is_400_not_its_last_value_searched(caller, study_a):
    """Two accession numbers were searched as the last one, with no word said."""
    search = caller("doctor").post(
        SEARCH_URL, "accession_number=ACC-A1&accession_number=ACC-B2", content_type="application/x-www-form-urlencoded"
    )
    listed = caller("key_a").get(f"{STUDIES_URL}?status=queued&status=completed")

    assert (search.status_code, search.json()) == (400, {"detail": "accession_number was sent 2 times: send it once."})
    assert (listed.status_code, listed.json()) == (400, {"detail": "status was sent 2 times: send it once."})


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_a_search_body_nested_past_pythons_limit_is_400_not_500(caller, body):
    response = caller("key_a").generic("POST", SEARCH_URL, body, content_type="application/json")
    assert (response.status_code, response.json()) == (
        400, {"detail": "JSON parse error - the body is nested too deeply."},
    )  # fmt: skip


@pytest.mark.parametrize("who", ["doctor", "key_a"])
def test_options_on_the_search_describes_its_filters(caller, who):
    """Answered 500: DRF's metadata asked the view for a serializer it did not have."""
    response = caller(who).options(SEARCH_URL)
    assert response.status_code == 200
    assert sorted(response.json()["actions"]["POST"]) == [
        "accession_number",
        "sop_instance_uid",
        "status",
        "study_instance_uid",
    ]


def test_a_request_django_refuses_to_read_is_answered_in_json_on_the_api(caller):
    """More fields than Django reads got the portal's HTML page (bad-input review)."""
    words = "The request sends more fields than Pleura reads: send the few its documentation names."
    listed = caller("key_a").get(STUDIES_URL + "?" + "&".join(f"a{n}=1" for n in range(1001)))
    searched = caller("key_a").post(
        SEARCH_URL, "&".join(f"a{n}=1" for n in range(3000)), content_type="application/x-www-form-urlencoded"
    )

    for response in (listed, searched):
        assert (response.status_code, response["Content-Type"], response.json()) == (
            400, "application/json", {"detail": words},
        )  # fmt: skip


def test_a_person_still_gets_the_portals_page_for_such_a_request(client_for, doctor):
    response = client_for(doctor).get("/?" + "&".join(f"a{n}=1" for n in range(1001)))
    assert (response.status_code, response["Content-Type"].split(";")[0]) == (400, "text/html")


def test_an_accession_number_a_dicom_header_gives_in_latin_1_is_found_by_the_search(caller):
    """Stored as the header said ("ACC-é1"), it was refused by the search as not ASCII: the
    study could never be found by its order (EMR review)."""
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    data = make_dicom(gray, SpecificCharacterSet="ISO_IR 100", AccessionNumber="ACC-é1")
    client = caller("key_a")
    assert post_file(client, data).status_code == 202

    found = client.post(SEARCH_URL, {"accession_number": "ACC-é1"}, format="json")

    assert (found.status_code, [item["accession_number"] for item in found.json()["results"]]) == (200, ["ACC-é1"])
