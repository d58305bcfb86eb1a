"""When the image storage or the database cannot be reached, uploads, API calls, images and
portal pages are answered 503 with Retry-After and words a human understands (EMRs retry
on 503, not on 500), nothing is half stored, and what was stored before is untouched.
Without Redis, uploads go on."""

from __future__ import annotations

import errno
import socket
import threading

import psycopg
import pytest
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from rest_framework.test import APIClient

from config.cache import redis_cache_settings
from config.errors import server_error
from diagnostics import services
from diagnostics.imaging import StorageUnavailable
from diagnostics.models import Study
from hospital import api as hospital_api
from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore.models import ModelVersion
from tests.conftest import files_limited_to, needs_postgresql, stored_files
from tests.ingestion.conftest import CR_CHEST, DX_CHEST, PNEUMONIA_PNG, STUDIES_URL, post_dicom_body, post_file
from tests.ingestion.test_api_access import add_prediction, model_version
from tests.ingestion.test_stow import failed, related_body, stow

STORAGE_DOWN = (
    "The image could not be saved just now because Pleura's image storage is unavailable. "
    "Nothing was stored: please send it again in a minute."
)
IMAGES_DOWN = (
    "The image cannot be shown just now because Pleura's image storage is unavailable. Please try again in a minute."
)
DEAD_REDIS = "redis://127.0.0.1:9/0"  # nothing listens on port 9
DATABASE_DOWN = "Pleura's database is unavailable just now, so nothing was read or stored. Please try again shortly."


def test_an_upload_while_the_storage_is_down_is_503_and_the_same_upload_later_is_stored(
    key_a, key_client, stored, storage_down, caplog
):
    _, raw = key_a
    client = key_client(raw)
    assert post_file(client, PNEUMONIA_PNG.read_bytes()).status_code == 202
    before = stored()

    storage_down()
    response = post_dicom_body(client, CR_CHEST.read_bytes())
    storage_down.up()

    assert response.status_code == 503
    assert response.json() == {"detail": STORAGE_DOWN}
    assert response["Retry-After"] == "60"
    assert stored() == before
    event = AuditEvent.objects.get(action="study.upload_rejected")
    size = CR_CHEST.stat().st_size
    assert event.detail == {"source": "api", "status_code": 503, "reason": STORAGE_DOWN, "size": size}
    assert "the original could not be written to storage (NotADirectoryError)" in caplog.text

    again = post_dicom_body(client, CR_CHEST.read_bytes())
    assert again.status_code == 202
    assert Study.objects.count() == before.studies + 1
    assert len(stored().files) == len(before.files) + 1


def test_stow_while_the_storage_is_down_is_503_with_each_instance_out_of_resources(
    key_a, key_client, stored, storage_down
):
    _, raw = key_a
    before = stored()

    storage_down()
    response = stow(key_client(raw), related_body(("application/dicom", CR_CHEST.read_bytes()),
                                                  ("application/dicom", DX_CHEST.read_bytes())))  # fmt: skip
    storage_down.up()

    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert response.json() == {"00081198": {"vr": "SQ", "Value": [failed(0xA700, CR_CHEST), failed(0xA700, DX_CHEST)]}}
    assert stored() == before


@pytest.mark.django_db(transaction=True)
def test_an_api_call_while_the_database_is_down_is_503_with_retry_after(key_a, key_client, caplog):
    needs_postgresql("a database server whose connection can be cut")
    _, raw = key_a
    client = key_client(raw)
    connection.ensure_connection()
    _cut_connection(connection.connection.info.backend_pid)

    upload = post_file(client, PNEUMONIA_PNG.read_bytes())
    listing = client.get(STUDIES_URL)
    connection.close()  # the next query opens a new connection

    for response in (upload, listing):
        assert response.status_code == 503
        assert response.json() == {"detail": DATABASE_DOWN}
        assert response["Retry-After"] == "30"
    assert "database unavailable in StudyListCreateView (OperationalError)" in caplog.text
    assert Study.objects.count() == 0


def _cut_connection(backend_pid: int) -> None:
    """End this test's database session from the server's side, as a restart does."""
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
        autocommit=True,
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [backend_pid])


def test_a_portal_upload_while_the_storage_is_down_says_so_inline(client_for, doctor, stored, storage_down):
    radiograph = SimpleUploadedFile("chest.png", PNEUMONIA_PNG.read_bytes(), content_type="image/png")

    storage_down()
    response = client_for(doctor).post(reverse("diagnostics:upload"), {"files": radiograph}, HTTP_HX_REQUEST="true")
    storage_down.up()

    html = response.content.decode()
    assert (response.status_code, response["Retry-After"]) == (503, "60")
    assert html.lstrip().startswith('<div class="upload-result upload-result--error" data-status="503">')
    assert f"<strong>Not accepted.</strong> {escape(STORAGE_DOWN)}" in html
    assert stored().studies == 0


def test_a_write_cut_short_by_a_full_disk_leaves_no_part_of_the_file(hospital_a, media_root):
    study = Study(hospital=hospital_a, source=Study.Source.API)
    data = CR_CHEST.read_bytes()
    with files_limited_to(64 * 1024), pytest.raises(StorageUnavailable) as refused:
        services._write_original(study, data)

    assert isinstance(refused.value.__cause__, OSError)
    assert refused.value.__cause__.errno == errno.EFBIG
    assert len(data) > 64 * 1024
    assert stored_files(media_root) == frozenset()


class RequestEnded(BaseException):
    """What gunicorn's timeout raises in a worker (SystemExit), as a test may raise it."""


@pytest.fixture
def request_ends_while_queueing(monkeypatch):
    """The queueing of a study ends the request, as gunicorn's timeout does on a hung broker."""

    def hangs_until_the_request_ends(study_id):
        raise RequestEnded

    monkeypatch.setattr("diagnostics.tasks.enqueue_prediction", hangs_until_the_request_ends)


@pytest.mark.django_db(transaction=True)  # no transaction around the upload: queued at once, as in production
def test_a_request_ended_while_queueing_a_stored_study_keeps_its_original(
    hospital_a, media_root, request_ends_while_queueing
):
    """Queued inside the insert's `try`, a request ended there (gunicorn's timeout, on a
    hung broker) removed the original of a study already filed, which then failed as
    "missing file" (reliability review)."""
    with pytest.raises(RequestEnded):
        services.ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)

    study = Study.objects.get()
    assert stored_files(media_root) == {study.original_file.name}
    assert (study.status, study.queued_at is not None) == (Study.Status.QUEUED, True)  # the sweeper sends it


@pytest.mark.django_db(transaction=True)
def test_a_request_ended_while_queueing_a_failed_study_sent_again_keeps_its_new_copy(hospital_a, media_root, request):
    """The same on the path a failed study's copy takes, which every failure's words ask
    for: the copy the committed row held was removed (diff review)."""
    from tests.ingestion.test_sent_again import failed

    first, _ = services.ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    first.original_file.storage.delete(first.original_file.name)
    failed(first, Study.Failure.MISSING_FILE, "The stored image file is missing.")
    request.getfixturevalue("request_ends_while_queueing")  # from here on

    with pytest.raises(RequestEnded):
        services.ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)

    study = Study.objects.get()
    assert (study.status, study.original_file.name != first.original_file.name) == (Study.Status.QUEUED, True)
    assert stored_files(media_root) == {study.original_file.name}


@pytest.fixture
def predicted(hospital_a, media_root) -> Study:
    """A completed study of hospital A with its heatmap; its portal picture is not drawn yet."""
    study, _ = services.ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    add_prediction(study, model_version("resnet-v1", status=ModelVersion.Status.ACTIVE), probability=0.9)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.COMPLETED, completed_at=timezone.now())
    return study


def _image_urls(study: Study) -> dict[str, str]:
    return {
        "api image": f"{STUDIES_URL}{study.code}/image",
        "api heatmap": f"{STUDIES_URL}{study.code}/heatmap",
        "portal image": reverse("diagnostics:study_image", args=[study.code]),
        "portal heatmap": reverse("diagnostics:study_heatmap", args=[study.code]),
    }


def _viewer(user) -> APIClient:
    """One session for the portal and the API, answered as a browser would be: an error
    no view handles gets the error page, not an exception in the test."""
    client = APIClient()
    client.raise_request_exception = False
    client.force_login(user)
    return client


@pytest.mark.parametrize("picture", ["drawn before", "not drawn yet"])
def test_images_while_the_storage_is_down_are_503_with_retry_after_and_shown_once_it_is_back(
    doctor, predicted, storage_down, picture, caplog
):
    viewer, urls = _viewer(doctor), _image_urls(predicted)
    if picture == "drawn before":
        assert viewer.get(urls["portal image"]).status_code == 200
    viewed_before = AuditEvent.objects.filter(action=Action.IMAGE_VIEWED).count()

    storage_down()
    refused = {name: viewer.get(path) for name, path in urls.items()}
    storage_down.up()

    assert {name: response.status_code for name, response in refused.items()} == dict.fromkeys(urls, 503)
    assert {name: response["Retry-After"] for name, response in refused.items()} == dict.fromkeys(urls, "60")
    assert refused["api image"].json() == {"detail": IMAGES_DOWN}
    assert refused["api heatmap"].json() == {"detail": IMAGES_DOWN}
    assert f'<p class="muted">{escape(IMAGES_DOWN)}</p>' in refused["portal image"].content.decode()
    assert f'<p class="muted">{escape(IMAGES_DOWN)}</p>' in refused["portal heatmap"].content.decode()
    assert AuditEvent.objects.filter(action=Action.IMAGE_VIEWED).count() == viewed_before
    assert "the image storage could not be read (NotADirectoryError)" in caplog.text

    shown = {name: viewer.get(path) for name, path in urls.items()}
    assert {name: response.status_code for name, response in shown.items()} == dict.fromkeys(urls, 200)
    assert AuditEvent.objects.filter(action=Action.IMAGE_VIEWED).count() == viewed_before + 4


def test_a_picture_the_storage_cannot_take_is_503_and_leaves_no_part_of_it(doctor, predicted, stored):
    viewer, urls = _viewer(doctor), _image_urls(predicted)
    before = stored()

    with files_limited_to(16 * 1024):
        response = viewer.get(urls["portal image"])

    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert stored() == before
    predicted.refresh_from_db()
    assert predicted.display_image.name == ""
    assert viewer.get(urls["portal image"]).status_code == 200


def test_a_picture_whose_original_is_gone_is_404_not_503(doctor, predicted):
    predicted.original_file.storage.delete(predicted.original_file.name)

    response = _viewer(doctor).get(_image_urls(predicted)["api image"])

    assert response.status_code == 404
    assert response.json() == {"detail": "This image is not available."}


@pytest.mark.django_db(transaction=True)
def test_a_portal_page_while_the_database_is_down_is_503_with_retry_after(doctor, caplog):
    needs_postgresql("a database server whose connection can be cut")
    browser = Client(raise_request_exception=False)
    browser.force_login(doctor)
    connection.ensure_connection()
    _cut_connection(connection.connection.info.backend_pid)

    response = browser.get(reverse("diagnostics:worklist"))
    connection.close()

    html = response.content.decode()
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "<h1>Pleura is temporarily unavailable</h1>" in html
    assert "Its database cannot be reached just now, so nothing was read or changed." in html
    assert "Service Unavailable: /" in caplog.text


def test_any_other_unhandled_error_is_still_the_500_page(rf):
    try:
        raise ValueError("a bug, not an outage")
    except ValueError:
        response = server_error(rf.get("/"))

    assert response.status_code == 500
    assert "<h1>Something went wrong</h1>" in response.content.decode()
    assert "Retry-After" not in response


def test_an_emr_upload_while_redis_is_down_is_stored_and_queued_without_the_rate_limit(
    key_a, key_client, settings, monkeypatch, caplog
):
    # Redis holds the rate limit's counters (and the broker's queues: the sweeper covers those).
    settings.CACHES = {"default": redis_cache_settings(DEAD_REDIS, settings.REDIS_CACHE_TIMEOUT_SECONDS)}
    monkeypatch.setattr(hospital_api, "_cache_down_warnings", hospital_api._AtMostEvery(60.0))
    _, raw = key_a
    client = key_client(raw)

    first = post_file(client, PNEUMONIA_PNG.read_bytes())
    second = post_dicom_body(client, CR_CHEST.read_bytes())

    assert (first.status_code, second.status_code) == (202, 202)
    assert list(Study.objects.values_list("status", flat=True)) == ["queued", "queued"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "hospital.api"]
    assert warnings == ["API rate limit not applied: the cache is unreachable (ConnectionError)"]


@pytest.mark.django_db(transaction=True)  # the upload runs in a thread, on a connection of its own
def test_an_emr_upload_while_redis_hangs_is_stored_after_the_cache_timeout(
    key_a, key_client, settings, monkeypatch, caplog
):
    # A server that takes connections (the kernel does, into its backlog) and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        hung_redis = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings.CACHES = {"default": redis_cache_settings(hung_redis, settings.REDIS_CACHE_TIMEOUT_SECONDS)}
        monkeypatch.setattr(hospital_api, "_cache_down_warnings", hospital_api._AtMostEvery(60.0))
        _, raw = key_a
        client, responses = key_client(raw), []
        upload = threading.Thread(target=lambda: _post_then_close(client, responses))
        upload.start()
        upload.join(timeout=60)  # a bound on the test, not a measure: it never takes this long

    assert not upload.is_alive()
    assert [response.status_code for response in responses] == [202]
    assert Study.objects.get().status == "queued"
    warnings = [r.getMessage() for r in caplog.records if r.name == "hospital.api"]
    assert warnings == ["API rate limit not applied: the cache is unreachable (TimeoutError)"]


def _post_then_close(client, responses: list) -> None:
    try:
        responses.append(post_file(client, PNEUMONIA_PNG.read_bytes()))
    finally:
        connections.close_all()  # this thread's own connection


def test_the_redis_cache_gives_up_on_a_command_after_its_timeout(settings):
    settings.CACHES = {"default": redis_cache_settings(DEAD_REDIS, 1)}
    pool = caches["default"]._cache._get_connection_pool(write=True)

    assert (pool.connection_kwargs["socket_connect_timeout"], pool.connection_kwargs["socket_timeout"]) == (1, 1)


@pytest.mark.django_db(transaction=True)  # the upload runs in a thread, on a connection of its own
def test_after_redis_failed_to_answer_the_next_commands_fail_at_once_for_a_while(settings):
    """A Redis that hangs cost each upload every command's timeout in turn, about 8 s with
    the broker's, and a 20-instance STOW ran past gunicorn's timeout (reliability review)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        settings.CACHES = {"default": redis_cache_settings(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", 1)}
        cache = caches["default"]
        with pytest.raises(Exception) as first:
            cache.get("pipeline:wake-up-waiting")
        with pytest.raises(Exception) as second:
            cache.add("pipeline:wake-up-waiting", 1)
        cache.unanswered.reset()  # as UNANSWERED_SKIP_SECONDS later
        with pytest.raises(Exception) as later:
            cache.get("pipeline:wake-up-waiting")

    assert (type(first.value).__name__, type(later.value).__name__) == ("TimeoutError", "TimeoutError")
    assert (type(second.value).__name__, str(second.value)) == (
        "ConnectionError", "Redis did not answer a moment ago: not asked again yet",
    )  # fmt: skip
    assert settings.UNANSWERED_SKIP_SECONDS == 10
