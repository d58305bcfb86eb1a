"""The pipeline benchmark's load generator posts real radiographs over kept-open HTTP
connections, as an EMR interface engine (or nginx in front of gunicorn) does."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from bench.dicom_load import write_dicom_copies
from bench.pipeline import GeneratorProcesses, Uploader, raw_images
from diagnostics.models import Study
from mlcore.preprocessing import load_grayscale_file
from tests.pipeline.conftest import TRAIN

pytestmark = pytest.mark.django_db(transaction=True)

IMAGES = sorted((TRAIN / "NORMAL").glob("*.jpeg"))[:6]


def test_uploads_from_several_threads_are_stored_for_the_keys_hospital(live_server, key_a, hospital_a):
    uploader = Uploader(live_server.url, key_a[1])

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(uploader.post, IMAGES))
    uploader.close()

    stored = Study.objects.filter(hospital=hospital_a).values_list("code", "original_size")
    assert sorted(codes) == sorted(str(code) for code, _ in stored)
    assert sorted(size for _, size in stored) == sorted(image.stat().st_size for image in IMAGES)


def test_one_thread_reuses_its_connection_from_one_upload_to_the_next(live_server, key_a):
    uploader = Uploader(live_server.url, key_a[1])

    uploader.post(IMAGES[0])
    (connection,) = uploader._opened
    socket = connection.sock
    uploader.post(IMAGES[1])

    assert uploader._opened == [connection]
    assert connection.sock is socket
    uploader.close()


def test_a_connection_idle_past_the_limit_is_reopened_before_the_next_upload(live_server, key_a):
    uploader = Uploader(live_server.url, key_a[1])
    uploader.IDLE_REOPEN_S = 0.0

    uploader.post(IMAGES[0])
    first_socket = uploader._opened[0].sock
    uploader.post(IMAGES[1])

    assert uploader._opened[0].sock is not first_socket
    assert Study.objects.count() == 2
    uploader.close()


def test_load_generator_processes_post_every_image_once_and_report_when(live_server, key_a, hospital_a):
    generator = GeneratorProcesses(2)
    try:
        before = time.time()
        started, cpu_seconds = generator.post_all(live_server.url, key_a[1], IMAGES[:5], clients=4)
    finally:
        generator.close()

    stored = dict(Study.objects.filter(hospital=hospital_a).values_list("code", "original_size"))
    assert sorted(started) == sorted(str(code) for code in stored)
    assert sorted(stored.values()) == sorted(image.stat().st_size for image in IMAGES[:5])
    assert all(before <= at <= time.time() for at in started.values())
    assert cpu_seconds > 0


def test_dicom_copies_are_posted_as_instances_of_their_own_carrying_the_enlarged_radiograph(
    live_server, key_a, hospital_a, tmp_path
):
    copies = write_dicom_copies(IMAGES[:3], tmp_path, 512)
    uploader = Uploader(live_server.url, key_a[1])

    codes = [uploader.post(copy) for copy in copies]
    uploader.close()

    studies = list(Study.objects.filter(hospital=hospital_a, code__in=codes))
    assert [(s.original_format, s.rows, s.columns, s.modality, s.body_part, s.warnings) for s in studies] == [
        ("dcm", 512, 512, "DX", "CHEST", [])
    ] * 3
    assert sorted(s.original_size for s in studies) == sorted(copy.stat().st_size for copy in copies)
    assert len({s.sop_instance_uid for s in studies}) == len({s.pixel_sha256 for s in studies}) == 3
    # Windowed back to 8 bits, each copy is its radiograph enlarged, to within a grey level.
    for copy, image, gray in zip(copies, IMAGES[:3], raw_images(copies), strict=True):
        enlarged = Image.fromarray(load_grayscale_file(image)).resize((512, 512), Image.Resampling.BILINEAR)
        assert np.abs(gray.astype(int) - np.asarray(enlarged, dtype=int)).max() <= 1, copy.name
