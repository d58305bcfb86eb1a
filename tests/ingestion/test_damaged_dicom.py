"""DICOM instances whose pixels decode but whose lookup tables or rescale values are
broken, as real CR and DX files sometimes are: refused with 422 in words, nothing
stored, and in a STOW-RS request the other instances stored all the same."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from diagnostics import dicom, services
from diagnostics.models import Study
from hospital.models import AuditEvent
from tests.ingestion.conftest import STUDIES_URL, a_picture, make_dicom, post_dicom_body
from tests.ingestion.test_stow import related_body, stow

GRAY16 = a_picture(dtype=np.uint16)
GRAY8 = a_picture()
MALFORMED = (
    "The DICOM's pixel values could not be turned into an image: its lookup tables or rescale attributes are malformed."
)


def lut(descriptor: list[int], data: bytes) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    return Sequence([item])


DAMAGED = {
    # 4096 entries of 8 bits packed one a byte (the standard wants one a 16-bit word)
    "VOI LUT of 8-bit entries packed in bytes": lambda: make_dicom(
        GRAY16, VOILUTSequence=lut([4096, 0, 8], bytes(range(256)) * 16)
    ),
    "VOI LUT of 0 bits": lambda: make_dicom(GRAY16, VOILUTSequence=lut([4, 0, 0], b"\x00\x01" * 4)),
    "Modality LUT shorter than it says": lambda: make_dicom(
        GRAY16, ModalityLUTSequence=lut([0, 0, 16], b"\x00\x01" * 4096)
    ),
    "Modality LUT without a descriptor": lambda: make_dicom(GRAY16, ModalityLUTSequence=Sequence([Dataset()])),
    "two Rescale Slopes on 8-bit pixels": lambda: make_dicom(GRAY8, RescaleSlope=[1, 2]),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_an_instance_with_broken_lookup_tables_is_refused_in_words(damage, emr, stored):
    before = stored()

    response = post_dicom_body(emr, DAMAGED[damage]())

    assert (response.status_code, response.json()) == (422, {"detail": MALFORMED})
    assert stored() == before


def rle_frame_missing_a_byte() -> bytes:
    """A 12-bit RLE frame whose second segment lost its first byte (the frame's length
    kept): the Rust RLE decoder panics on it rather than raise."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(GRAY16 >> 4)))
    dataset.compress(RLELossless)
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    header = 64  # the RLE header: the segment count and 15 offsets
    dataset.PixelData = encapsulate([frame[:header] + frame[header + 1 :] + b"\0"])
    file = io.BytesIO()
    dataset.save_as(file, enforce_file_format=True)
    return file.getvalue()


def test_a_damaged_rle_frame_is_refused_in_words_and_recorded(emr, stored):
    """It ended the web worker that read it: the EMR got no answer and the trail no refusal,
    and each retry ended another worker (imaging review)."""
    before = stored()

    response = post_dicom_body(emr, rle_frame_missing_a_byte())

    assert (response.status_code, response.json()["detail"]) == (
        422, "The DICOM pixel data could not be decoded (RLE Lossless).",
    )  # fmt: skip
    assert stored() == before
    refused = AuditEvent.objects.get(action="study.upload_rejected")
    assert (refused.outcome, refused.detail["status_code"]) == ("failure", 422)


def test_a_voi_lut_of_16_bits_holding_12_bit_values_is_refused_as_nearly_black(emr, stored):
    """The table's output is read on its descriptor's 16-bit scale, so the picture came out
    nearly black and a normal chest was labelled pneumonia at 1.0 (imaging review)."""
    before = stored()
    twelve_bit_table = lut([4096, 0, 16], np.arange(4096, dtype="<u2").tobytes())
    upload = make_dicom(GRAY16 >> 4, BitsStored=12, HighBit=11, VOILUTSequence=twelve_bit_table)

    response = post_dicom_body(emr, upload)

    assert (response.status_code, response.json()["detail"]) == (
        422,
        "The image is nearly black: its brightest pixels reach 15 of 255, where a radiograph's bones and "
        "mediastinum are bright. Its window or lookup table is likely wrong; check the export from the modality "
        "or the PACS.",
    )
    assert stored() == before


def test_one_broken_instance_in_a_stow_request_costs_only_itself(emr):
    first, broken, last = (
        make_dicom(GRAY8),
        DAMAGED["VOI LUT of 8-bit entries packed in bytes"](),
        make_dicom(255 - GRAY8),
    )

    response = stow(
        emr, related_body(("application/dicom", first), ("application/dicom", broken), ("application/dicom", last))
    )

    assert response.status_code == 202
    body = response.json()
    assert (len(body["00081199"]["Value"]), len(body["00081198"]["Value"])) == (2, 1)
    assert body["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xC000]}  # cannot understand
    assert Study.objects.count() == 2


def test_a_code_string_that_grows_in_upper_case_still_fits_its_column(emr):
    """German sharp s upper-cases to SS: cut after upper-casing, or PostgreSQL refuses the
    row (value too long for varchar(64))."""
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(GRAY8)))
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.BodyPartExamined = "CHEST" + "\u00df" * 59
    file = io.BytesIO()
    dataset.save_as(file)

    response = post_dicom_body(emr, file.getvalue())

    assert response.status_code == 202
    assert Study.objects.get().body_part == "CHEST" + "SS" * 29 + "S"


def test_an_error_of_pleuras_own_is_answered_in_json_to_machines(key_a, monkeypatch):
    """An EMR parses {"detail": ...}; Django's HTML page for a 500 would be noise to it."""

    def broken(*args, **kwargs):
        raise RuntimeError("a defect of Pleura's")

    monkeypatch.setattr("diagnostics.services.ingest_upload", broken)
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")

    response = client.post(STUDIES_URL, make_dicom(GRAY8), content_type="application/dicom")

    assert (response.status_code, response["Content-Type"]) == (500, "application/json")
    assert response.json()["detail"].startswith("Pleura met an error of its own and could not complete this request")


def test_an_error_of_pleuras_own_on_one_stow_instance_fails_only_that_one(emr, monkeypatch):
    first, second, third = make_dicom(GRAY8), make_dicom(255 - GRAY8), make_dicom(GRAY8 // 2)
    ingest = services.ingest_upload

    def fails_on_the_second(*, data, **kwargs):
        if data == second:
            raise RuntimeError("a defect of Pleura's")
        return ingest(data=data, **kwargs)

    monkeypatch.setattr(services, "ingest_upload", fails_on_the_second)
    body = related_body(*(("application/dicom", part) for part in (first, second, third)))

    response = stow(emr, body)

    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"] for item in failed] == [{"vr": "US", "Value": [0x0110]}]  # processing failure
    assert Study.objects.count() == 2


def test_an_unknown_transfer_syntax_is_not_quoted_back_in_the_answer_or_the_trail(emr, stored):
    """pydicom names an unknown UID by the UID itself: here the file's own words."""
    implicit = make_dicom(GRAY8, transfer_syntax="1.2.840.10008.1.2")
    data = implicit.replace(b"1.2.840.10008.1.2\x00", b"DOE^JANE^19700101 ")  # the same length
    assert b"DOE^JANE" in data
    before = stored()

    response = post_dicom_body(emr, data)

    assert (response.status_code, response.json()) == (
        422,
        {"detail": "The DICOM pixel data could not be decoded (an encoding Pleura does not know)."},
    )
    assert stored() == before
    assert not [detail for detail in AuditEvent.objects.values_list("detail", flat=True) if "JANE" in str(detail)]


def _encapsulated(image_format: str, size: tuple[int, int], label: tuple[int, int], syntax: str) -> bytes:
    """A DICOM whose compressed frame is `size` (columns, rows) but whose attributes say `label`."""
    from pydicom.encaps import encapsulate

    buffer = io.BytesIO()
    Image.fromarray(a_picture(size[1], size[0])).save(buffer, image_format)
    columns, rows = label
    return make_dicom(
        np.zeros((rows, columns), dtype=np.uint8), transfer_syntax=syntax, PixelData=encapsulate([buffer.getvalue()])
    )


@pytest.mark.parametrize(
    ("image_format", "syntax"),
    [("JPEG", "1.2.840.10008.1.2.4.50"), ("JPEG2000", "1.2.840.10008.1.2.4.90")],
)
def test_a_compressed_frame_larger_than_its_attributes_is_refused_before_it_is_decoded(
    image_format, syntax, emr, stored, monkeypatch
):
    """The limit is checked on Rows x Columns, but decoders decode the codestream's own
    size: a 10 MB JPEG of 30000x30000 labelled 64x64 took 4.4 GB (reviewer's probe)."""
    monkeypatch.setattr(dicom, "pixel_array", lambda *a, **k: pytest.fail("decoded before the check"))
    before = stored()

    response = post_dicom_body(emr, _encapsulated(image_format, (1200, 900), (64, 64), syntax))

    assert (response.status_code, response.json()) == (
        422,
        {
            "detail": "The DICOM's compressed image is 1200x900 pixels, but its attributes say 64x64: "
            "the file is inconsistent."
        },
    )
    assert stored() == before


@pytest.mark.parametrize(
    ("image_format", "syntax"),
    [("JPEG", "1.2.840.10008.1.2.4.50"), ("JPEG2000", "1.2.840.10008.1.2.4.90")],
)
def test_a_compressed_frame_of_its_attributes_size_is_stored(image_format, syntax, emr):
    response = post_dicom_body(emr, _encapsulated(image_format, (96, 64), (96, 64), syntax))
    assert (response.status_code, response.json()["status"]) == (202, "queued")


def _jpeg_frame(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    columns, rows = size
    Image.fromarray((np.add.outer(np.arange(rows), np.arange(columns)) % 256).astype(np.uint8)).save(
        buffer, "JPEG", quality=95
    )
    return buffer.getvalue()


def _dicom_of_frame(frame: bytes, label: tuple[int, int]) -> bytes:
    from pydicom.encaps import encapsulate

    columns, rows = label
    return make_dicom(
        np.zeros((rows, columns), dtype=np.uint8),
        transfer_syntax="1.2.840.10008.1.2.4.50",
        PixelData=encapsulate([frame]),
    )


def test_a_frame_header_hidden_behind_a_64_kb_segment_is_still_read(emr, stored, monkeypatch):
    """The header was looked for in the frame's first 64 KB only: one APP segment of that
    size before it let a mislabelled frame through to the decoder (386 MB for 10000x10000
    in the diff review's probe)."""
    frame = _jpeg_frame((1200, 900))
    padding = b"\xff\xe5" + struct.pack(">H", 65535) + b"\0" * 65533  # an APP5 segment of 64 KB
    hidden = frame[:2] + padding + frame[2:]
    monkeypatch.setattr(dicom, "pixel_array", lambda *a, **k: pytest.fail("decoded before the check"))
    before = stored()

    response = post_dicom_body(emr, _dicom_of_frame(hidden, (64, 64)))

    assert (response.status_code, response.json()["detail"]) == (
        422,
        "The DICOM's compressed image is 1200x900 pixels, but its attributes say 64x64: the file is inconsistent.",
    )
    assert stored() == before


def test_a_frame_padded_with_empty_segments_is_refused_before_its_header_is_looked_for(emr, stored, monkeypatch):
    """The frame header's search walked each segment in a Python loop: millions of empty
    APP5 segments cost what they cost Pillow in a JPEG file (bad-input review)."""
    frame = _jpeg_frame((64, 64))
    padded = frame[:2] + b"\xff\xe5\x00\x02" * 1001 + frame[2:]
    monkeypatch.setattr(dicom, "pixel_array", lambda *a, **k: pytest.fail("decoded before the check"))
    before = stored()

    response = post_dicom_body(emr, _dicom_of_frame(padded, (64, 64)))

    assert (response.status_code, response.json()["detail"]) == (
        422,
        "The JPEG image carries more than 1,000 segments before its pixel data.",
    )
    assert stored() == before


def test_a_compressed_frame_without_a_readable_header_is_refused_undecoded(emr, stored, monkeypatch):
    monkeypatch.setattr(dicom, "pixel_array", lambda *a, **k: pytest.fail("decoded before the check"))
    before = stored()

    response = post_dicom_body(emr, _dicom_of_frame(b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9", (64, 64)))

    assert (response.status_code, response.json()["detail"]) == (
        422,
        "The DICOM's compressed image has no frame header Pleura can read.",
    )
    assert stored() == before


def test_a_jpeg_whose_height_comes_in_a_dnl_marker_is_accepted_and_decoded_exactly(emr):
    """Height 0 in the frame header, the real one later (DNL): a valid JPEG the size check
    refused as '96x0'."""
    frame = bytearray(_jpeg_frame((96, 64)))
    start = frame.find(b"\xff\xc0")
    struct.pack_into(">H", frame, start + 5, 0)
    end = frame.rfind(b"\xff\xd9")
    with_dnl = bytes(frame[:end]) + b"\xff\xdc\x00\x04" + struct.pack(">H", 64) + b"\xff\xd9"

    response = post_dicom_body(emr, _dicom_of_frame(with_dnl, (96, 64)))

    assert (response.status_code, response.json()["status"]) == (202, "queued")
    decoded = dicom.to_grayscale(dicom.read_dataset(_dicom_of_frame(with_dnl, (96, 64))))
    plain = dicom.to_grayscale(dicom.read_dataset(_dicom_of_frame(_jpeg_frame((96, 64)), (96, 64))))
    assert decoded.shape == (64, 96) and np.array_equal(decoded, plain)
