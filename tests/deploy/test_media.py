"""Protected media: Django authorizes, nginx (X-Accel-Redirect) or Django streams."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.db.models.fields.files import FieldFile
from django.http import Http404
from storages.backends.s3 import S3Storage

from diagnostics.media import protected_file_response
from diagnostics.models import Study

NAME = "studies/1f2e/3d4c/display.png"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _fieldfile(storage, name: str = NAME) -> FieldFile:
    fieldfile = FieldFile(None, Study._meta.get_field("display_image"), name)
    fieldfile.storage = storage
    return fieldfile


@pytest.fixture
def filesystem(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    storage.save(NAME, ContentFile(PNG))
    return storage


def test_without_a_proxy_django_streams_the_file(settings, filesystem):
    settings.PROTECTED_MEDIA_ACCEL_PREFIX = ""
    response = protected_file_response(_fieldfile(filesystem), content_type="image/png", download_name="x.png")
    assert b"".join(response.streaming_content) == PNG
    assert "X-Accel-Redirect" not in response
    assert response["Cache-Control"] == "private, no-store"


def test_behind_nginx_the_filesystem_file_is_handed_to_an_internal_location(settings, filesystem):
    settings.PROTECTED_MEDIA_ACCEL_PREFIX = "/_protected/"
    response = protected_file_response(_fieldfile(filesystem), content_type="image/png", download_name="x.png")
    assert response["X-Accel-Redirect"] == f"/_protected/media/{NAME}"
    assert response.content == b""
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'inline; filename="x.png"'
    assert response["Cache-Control"] == "private, no-store"


def test_behind_nginx_an_s3_object_is_fetched_by_nginx_with_a_short_signed_url(settings):
    settings.PROTECTED_MEDIA_ACCEL_PREFIX = "/_protected"
    settings.PROTECTED_MEDIA_S3_URL_SECONDS = 45
    storage = S3Storage(
        bucket_name="pleura-media",
        endpoint_url="https://objects.hospital.example",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region_name="eu-west-1",
        addressing_style="path",
        signature_version="s3v4",
        default_acl="private",
    )
    response = protected_file_response(_fieldfile(storage), content_type="image/png", download_name="x.png")
    target = urlsplit(response["X-Accel-Redirect"])
    assert target.path == f"/_protected/s3/https/objects.hospital.example/pleura-media/{NAME}"
    query = parse_qs(target.query)
    assert query["X-Amz-Expires"] == ["45"]
    assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/")
    assert len(query["X-Amz-Signature"][0]) == 64
    assert response.content == b""


def test_missing_file_is_a_404_not_a_500(settings, tmp_path):
    settings.PROTECTED_MEDIA_ACCEL_PREFIX = ""
    with pytest.raises(Http404):
        protected_file_response(
            _fieldfile(FileSystemStorage(location=tmp_path)), content_type="image/png", download_name="x.png"
        )


def test_empty_field_is_a_404(settings, filesystem):
    with pytest.raises(Http404):
        protected_file_response(_fieldfile(filesystem, name=""), content_type="image/png", download_name="x.png")
