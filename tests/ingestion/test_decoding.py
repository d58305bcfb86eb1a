"""Decoding real files into the model's 8-bit grayscale: DICOM (every transfer syntax
pydicom ships an example of), PNG and JPEG. The oracles are the DICOM standard's
formulas applied to pydicom's raw pixel values, and lossless/lossy encodings of the
same picture compared with each other."""

from __future__ import annotations

import io
import struct
from datetime import date

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps

from diagnostics import imaging
from diagnostics.dicom import intended_use_warnings, patient_age_years
from diagnostics.imaging import decode_upload, pixel_sha256
from tests.ingestion.conftest import (
    CR_CHEST,
    DX_CHEST,
    NORMAL_JPEG,
    PNEUMONIA_JPEG,
    PNEUMONIA_PNG,
    TIBIA,
    a_picture,
    decode_png,
    make_dicom,
    png_of,
    post_file,
    pydicom_file,
)


def gray_of(path) -> np.ndarray:
    return decode_upload(path.read_bytes()).gray


def window_8bit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, linear function, output 0..255."""
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_cr_chest_without_preamble_is_windowed_and_inverted_from_monochrome1():
    decoded = decode_upload(CR_CHEST.read_bytes())
    raw = pydicom.dcmread(CR_CHEST, force=True)
    raw.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    expected = 255 - window_8bit(raw.pixel_array.astype(np.float64), 550, 1024)
    assert decoded.format == "dcm"
    assert decoded.gray.dtype == np.uint8
    assert decoded.gray.shape == (440, 440)
    np.testing.assert_array_equal(decoded.gray, expected)
    assert decoded.warnings == []


def test_cr_chest_metadata_is_read_from_the_header():
    meta = decode_upload(CR_CHEST.read_bytes()).metadata
    assert meta["modality"] == "CR"
    assert meta["body_part"] == "CHEST"
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["transfer_syntax_uid"] == "1.2.840.10008.1.2"
    assert meta["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.1"
    assert meta["rows"] == 440
    assert meta["columns"] == 440
    ds = pydicom.dcmread(CR_CHEST, force=True)
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert meta["study_instance_uid"] == ds.StudyInstanceUID
    assert meta["series_instance_uid"] == ds.SeriesInstanceUID
    assert meta["patient_id"] == str(ds.get("PatientID", ""))
    assert meta["patient_name"] == str(ds.get("PatientName", ""))
    assert meta["study_date"] is None  # this old file has none


def test_every_identifier_and_acquisition_field_is_extracted():
    data = make_dicom(
        np.zeros((4, 6), dtype=np.uint8),
        PatientID="MRN-7731",
        PatientName="Doe^Jane",
        PatientBirthDate="19800229",
        PatientSex="F",
        AccessionNumber="ACC-42",
        BodyPartExamined="chest",
        ViewPosition="PA",
        StudyDate="20240131",
        Modality="CR",
    )
    meta = decode_upload(data).metadata
    assert meta["patient_id"] == "MRN-7731"
    assert meta["patient_name"] == "Doe^Jane"
    assert meta["patient_birth_date"] == date(1980, 2, 29)
    assert meta["patient_sex"] == "F"
    assert meta["accession_number"] == "ACC-42"
    assert meta["body_part"] == "CHEST"
    assert meta["view_position"] == "PA"
    assert meta["study_date"] == date(2024, 1, 31)
    assert meta["modality"] == "CR"
    assert meta["rows"] == 4
    assert meta["columns"] == 6
    assert meta["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    # Born 1980, examined 2024: an adult, outside the pediatric training data.
    assert decode_upload(data).warnings == ["adult"]


def test_dx_chest_8_bit_without_window_keeps_its_display_values():
    decoded = decode_upload(DX_CHEST.read_bytes())
    raw = pydicom.dcmread(DX_CHEST).pixel_array
    np.testing.assert_array_equal(decoded.gray, raw)
    assert decoded.metadata["modality"] == "DX"
    assert decoded.metadata["body_part"] == ""
    assert decoded.warnings == ["adult"]  # Patient's Age "81", written without a unit


def test_tibia_in_jpeg_2000_is_decoded_and_flagged_as_not_a_chest():
    decoded = decode_upload(TIBIA.read_bytes())
    raw = pydicom.dcmread(TIBIA)
    expected = 255 - window_8bit(raw.pixel_array.astype(np.float64), 550, 1024)
    np.testing.assert_array_equal(decoded.gray, expected)
    assert decoded.metadata["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"
    assert decoded.metadata["body_part"] == "EXTREMITY"
    assert decoded.warnings == ["not_chest", "adult"]  # born 1979, examined 2004


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_lossless_transfer_syntaxes_give_identical_pixels(name):
    reference = gray_of(pydicom_file("MR_small.dcm"))
    raw = pydicom.dcmread(pydicom_file("MR_small.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(reference, window_8bit(raw, 600, 1600))
    np.testing.assert_array_equal(gray_of(pydicom_file(name)), reference)


def test_rescale_slope_and_intercept_are_applied_before_min_max():
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    hounsfield = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low, high = hounsfield.min(), hounsfield.max()
    expected = np.clip(np.rint((hounsfield - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(gray_of(pydicom_file("CT_small.dcm")), expected)


def test_rescale_then_window_in_jpeg_2000_ct():
    ds = pydicom.dcmread(pydicom_file("693_J2KI.dcm"))
    hounsfield = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(gray_of(pydicom_file("693_J2KI.dcm")), window_8bit(hounsfield, 40, 100))


def test_bits_above_bits_stored_are_ignored():
    values = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    garbage = values | np.uint16(0xF000)  # an overlay in the unused high bits
    clean = decode_upload(make_dicom(values, BitsStored=12, HighBit=11)).gray
    dirty = decode_upload(make_dicom(garbage, BitsStored=12, HighBit=11)).gray
    np.testing.assert_array_equal(clean, dirty)
    np.testing.assert_array_equal(clean, np.array([[0, 62], [125, 255]], dtype=np.uint8))


PIXEL_LAYOUTS = {
    "8 bits": (np.uint8, 8, {}),
    "6 of 8 bits": (np.uint8, 6, {}),
    "12 of 16 bits": (np.uint16, 12, {}),
    "16 bits": (np.uint16, 16, {}),
    "signed 12 of 16 bits": (np.int16, 12, {"PixelRepresentation": 1}),
    "signed 16 bits": (np.int16, 16, {"PixelRepresentation": 1}),
}


def voi_lut_sequence(first_mapped: int = 0) -> pydicom.Sequence:
    """A VOI LUT of 4096 entries of 12 bits (a gamma curve) from `first_mapped` on."""
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4096, first_mapped, 12])  # LUT Descriptor
    curve = np.rint(4095 * (np.arange(4096) / 4095) ** 0.6).astype(int).tolist()
    item.add_new(0x00283006, "US", curve)  # LUT Data
    return pydicom.Sequence([item])


DISPLAY_STEPS = {
    "the image's range": {},
    # Through the table too: pixel by pixel, a 1.8 MB RLE file of 7745x7745 took 3 GB.
    "VOI LUT": {"VOILUTSequence": voi_lut_sequence()},
    "rescaled, then VOI LUT": {"RescaleSlope": 0.5, "RescaleIntercept": 3, "VOILUTSequence": voi_lut_sequence(100)},
    "rescaled, then its range": {"RescaleSlope": 0.5, "RescaleIntercept": 3},
    "linear window": {"WindowCenter": 700, "WindowWidth": 900},
    "rescaled, then windowed": {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 40, "WindowWidth": 400},
    "linear exact window": {"WindowCenter": 300, "WindowWidth": 500, "VOILUTFunction": "LINEAR_EXACT"},
    "sigmoid window": {"WindowCenter": 100, "WindowWidth": 300, "VOILUTFunction": "SIGMOID"},
    "window of width 1": {"WindowCenter": 50, "WindowWidth": 1},
}


@pytest.mark.parametrize("steps", DISPLAY_STEPS)
@pytest.mark.parametrize("layout", PIXEL_LAYOUTS)
def test_the_table_of_every_stored_value_changes_no_pixel(layout, steps):
    """8- and 16-bit pixels go through a table of every value they may hold; each pixel
    must come out as windowing it on its own (the path wider pixels still take) gives."""
    from diagnostics import dicom

    dtype, bits_stored, attributes = PIXEL_LAYOUTS[layout]
    info = np.iinfo(dtype)
    # Every bit pattern can occur, the unused high bits (an overlay, garbage) included.
    pixels = np.random.default_rng(7).integers(info.min, info.max, size=(64, 48), endpoint=True, dtype=dtype)
    data = make_dicom(pixels, BitsStored=bits_stored, HighBit=bits_stored - 1, **attributes, **DISPLAY_STEPS[steps])
    ds = pydicom.dcmread(io.BytesIO(data))

    each_pixel = dicom._apply_voi(dicom._mask_bits_stored(ds.pixel_array, ds), ds)

    np.testing.assert_array_equal(decode_upload(data).gray, each_pixel)


def test_only_the_first_window_is_used_so_a_second_that_is_not_a_number_is_no_reason_to_refuse():
    pixels = np.random.default_rng(7).integers(0, 4095, size=(32, 32), endpoint=True, dtype=np.uint16)

    two_windows = decode_upload(make_dicom(pixels, WindowCenter=[700, "NaN"], WindowWidth=[900, "inf"]))

    np.testing.assert_array_equal(
        two_windows.gray, decode_upload(make_dicom(pixels, WindowCenter=700, WindowWidth=900)).gray
    )


@pytest.mark.parametrize(
    ("photometric", "lut_shape", "expected"),
    [
        ("MONOCHROME2", None, [[0, 255]]),
        ("MONOCHROME2", "IDENTITY", [[0, 255]]),
        ("MONOCHROME1", None, [[255, 0]]),
        # What DX requires beside MONOCHROME1: the same inversion restated, not undone.
        ("MONOCHROME1", "INVERSE", [[255, 0]]),
        ("MONOCHROME2", "INVERSE", [[255, 0]]),
    ],
)
def test_monochrome1_or_an_inverse_presentation_lut_inverts_once(photometric, lut_shape, expected):
    values = np.array([[0, 255]], dtype=np.uint8)
    shape = {"PresentationLUTShape": lut_shape} if lut_shape else {}
    gray = decode_upload(make_dicom(values, PhotometricInterpretation=photometric, **shape)).gray
    np.testing.assert_array_equal(gray, expected)


def test_a_dx_chest_in_monochrome1_with_its_inverse_lut_reads_as_without_it():
    dataset = pydicom.dcmread(CR_CHEST, force=True)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    plain = decode_upload(CR_CHEST.read_bytes()).gray
    dataset.PresentationLUTShape = "INVERSE"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    np.testing.assert_array_equal(decode_upload(buffer.getvalue()).gray, plain)


def test_multi_frame_takes_the_first_frame():
    frames = pydicom.dcmread(pydicom_file("SC_rgb_rle_2frame.dcm")).pixel_array
    first = gray_of(pydicom_file("SC_rgb_rle_2frame.dcm"))
    np.testing.assert_array_equal(first, gray_of(pydicom_file("SC_rgb_rle.dcm")))
    second_as_gray = np.asarray(Image.fromarray(frames[1], mode="RGB").convert("L"))
    assert not np.array_equal(first, second_as_gray)


@pytest.mark.parametrize(
    "name", ["SC_rgb_gdcm_KY.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"]
)
def test_colour_encodings_of_one_picture_give_the_same_gray(name):
    np.testing.assert_array_equal(gray_of(pydicom_file(name)), gray_of(pydicom_file("SC_rgb_rle.dcm")))


@pytest.mark.parametrize(
    "name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "SC_ybr_full_422_uncompressed.dcm"]
)
def test_lossy_jpeg_baseline_colour_is_close_to_the_lossless_original(name):
    lossy = gray_of(pydicom_file(name)).astype(int)
    lossless = gray_of(pydicom_file("SC_rgb_rle.dcm")).astype(int)
    assert np.abs(lossy - lossless).max() <= 2


def test_colour_dicom_uses_the_same_luma_as_a_colour_png():
    rgb = pydicom.dcmread(pydicom_file("SC_rgb_rle.dcm")).pixel_array
    png = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(png, format="PNG")
    np.testing.assert_array_equal(decode_upload(png.getvalue()).gray, gray_of(pydicom_file("SC_rgb_rle.dcm")))


def test_jpeg_extended_12_bit_and_deflated_and_palette_decode():
    extended = decode_upload(pydicom_file("JPGExtended.dcm").read_bytes())
    deflated = decode_upload(pydicom_file("image_dfl.dcm").read_bytes())
    palette = decode_upload(pydicom_file("examples_palette.dcm").read_bytes())
    assert extended.gray.shape == (1024, 256)
    assert extended.metadata["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.51"
    assert deflated.gray.shape == (512, 512)
    assert deflated.metadata["transfer_syntax_uid"] == "1.2.840.10008.1.2.1.99"
    np.testing.assert_array_equal(deflated.gray, pydicom.dcmread(pydicom_file("image_dfl.dcm")).pixel_array)
    assert palette.gray.shape == (350, 800)
    assert palette.metadata["photometric_interpretation"] == "PALETTE COLOR"


def test_jpeg_ls_near_lossless_is_within_its_error_bound():
    ds = pydicom.dcmread(pydicom_file("JPEGLSNearLossless_08.dcm"))
    gray = gray_of(pydicom_file("JPEGLSNearLossless_08.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    expected = np.clip(np.rint((raw - raw.min()) * 255.0 / (raw.max() - raw.min())), 0, 255)
    np.testing.assert_array_equal(gray, expected.astype(np.uint8))


def test_non_chest_modalities_are_flagged_not_refused():
    decoded = decode_upload(pydicom_file("MR_small.dcm").read_bytes())
    assert decoded.metadata["modality"] == "MR"
    assert decoded.warnings == ["not_radiograph"]
    assert imaging.describe_warnings(decoded.warnings) == [
        {"code": "not_radiograph", "message": imaging.WARNINGS["not_radiograph"]}
    ]


def test_jpeg_chest_decodes_like_pillow_luma():
    decoded = decode_upload(NORMAL_JPEG.read_bytes())
    with Image.open(NORMAL_JPEG) as image:
        expected = np.asarray(image.convert("L"))
    assert decoded.format == "jpg"
    np.testing.assert_array_equal(decoded.gray, expected)
    assert decoded.metadata == {"rows": 224, "columns": 224, "photometric_interpretation": ""}


def test_png_and_jpeg_of_one_radiograph_hash_alike_only_when_pixels_match():
    png = decode_upload(PNEUMONIA_PNG.read_bytes())
    jpeg = decode_upload(PNEUMONIA_JPEG.read_bytes())
    np.testing.assert_array_equal(png.gray, jpeg.gray)
    assert png.pixel_sha256 == jpeg.pixel_sha256
    other = decode_upload(NORMAL_JPEG.read_bytes())
    assert other.pixel_sha256 != png.pixel_sha256


def test_pixel_hash_includes_the_shape():
    flat = np.zeros((4, 9), dtype=np.uint8)
    assert pixel_sha256(flat) != pixel_sha256(flat.reshape(6, 6))


def test_16_bit_png_is_stretched_to_8_bits():
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    gray = decode_upload(buffer.getvalue()).gray
    np.testing.assert_array_equal(gray, [[0, 64], [128, 255]])


def test_transparent_png_is_shown_on_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3] = 255  # one opaque pixel; the rest transparent

    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_upload(buffer.getvalue()).gray, [[200, 0], [0, 0]])


def test_display_png_is_the_model_gray_downscaled_to_1024():
    decoded = decode_upload(TIBIA.read_bytes())
    display = decode_png(imaging.display_png(decoded.gray))
    assert display.shape == (1024, 1024)
    small = decode_upload(CR_CHEST.read_bytes())
    np.testing.assert_array_equal(decode_png(imaging.display_png(small.gray)), small.gray)
    np.testing.assert_array_equal(decode_png(png_of(small.gray)), small.gray)


@pytest.mark.parametrize(
    ("header", "years"),
    [
        ({"PatientAge": "045Y"}, 45.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "026W"}, 26 * 7 / 365.25),
        ({"PatientAge": "081"}, 81.0),
        ({"PatientBirthDate": "20200115", "StudyDate": "20240115"}, 4.0),
        ({"PatientBirthDate": "20230115", "StudyDate": "20240115"}, 1.0),  # the first birthday, not 0.9993
        ({"PatientBirthDate": "20230115", "StudyDate": "20240114"}, 364 / 365.25),
        ({"PatientBirthDate": "20200229", "StudyDate": "20210228"}, 1.0),
        ({"PatientBirthDate": "20200301", "StudyDate": "20240815"}, 4 + 167 / 365.25),
        ({"PatientBirthDate": "20200115"}, None),
        ({"PatientAge": "old"}, None),
        ({}, None),
    ],
)
def test_patient_age_is_read_from_the_age_or_the_birth_and_study_dates(header, years):
    ds = pydicom.Dataset()
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    assert patient_age_years(ds) == (pytest.approx(years) if years is not None else None)


@pytest.mark.parametrize(
    ("years", "warnings"),
    [
        (None, []),
        (0.33, ["child_outside_trained_ages"]),  # 004M
        (0.99, ["child_outside_trained_ages"]),
        (1.0, []),
        (4.0, []),
        (5.99, []),
        (6.0, ["child_outside_trained_ages"]),
        (12.0, ["child_outside_trained_ages"]),
        (17.9, ["child_outside_trained_ages"]),
        (18.0, ["adult"]),
    ],
)
def test_a_child_of_the_trained_ages_is_not_flagged_and_others_are(years, warnings):
    """Only adults were flagged: a 4-month-old's or a 12-year-old's film got a result with no
    word, though the model learned from ages 1 to 5 only (test review)."""
    assert intended_use_warnings({"body_part": "CHEST", "modality": "CR"}, years) == warnings


@pytest.mark.parametrize(
    ("view", "warnings"),
    [("PA", []), ("AP", []), ("AP SUPINE", []), ("", []), ("LL", ["not_frontal"]), ("RL", ["not_frontal"])],
)
def test_a_view_that_is_not_frontal_is_flagged(view, warnings):
    """The model learned frontal films only: a lateral got a label with no word (ingestion review)."""
    assert intended_use_warnings({"body_part": "CHEST", "modality": "DX", "view_position": view}, 4.0) == warnings


def test_a_multi_frame_dicom_says_only_its_first_frame_was_analysed():
    decoded = decode_upload(pydicom_file("SC_rgb_rle_2frame.dcm").read_bytes())

    assert decoded.warnings[-1] == "first_frame_only"
    assert decode_upload(pydicom_file("SC_rgb_rle.dcm").read_bytes()).warnings[-1:] != ["first_frame_only"]
    assert imaging.describe_warnings(["first_frame_only"]) == [
        {
            "code": "first_frame_only",
            "message": "The DICOM holds several frames: only the first was analysed, and it is the one shown.",
        }
    ]


def _jpeg_with_exif(gray: np.ndarray, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A JPEG whose EXIF block holds exactly these (tag, type, count, 4-byte value) entries."""
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHI4s", *entry) for entry in entries) + b"\0\0\0\0"
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "JPEG", quality=95, exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    return buffer.getvalue()


def _orientation(value: int) -> tuple[int, int, int, bytes]:
    return (0x0112, 3, 1, struct.pack("<HH", value, 0))  # SHORT


# Not square and not symmetric, so every one of the eight orientations gives other pixels.
PORTRAIT = np.add.outer(np.arange(48, dtype=np.uint16) * 5, np.arange(32, dtype=np.uint16) * 2).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_turned_upright_as_its_exif_orientation_says(orientation):
    data = _jpeg_with_exif(PORTRAIT, [_orientation(orientation)])
    # Pillow's own reading of the orientation is the oracle.
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))

    gray = decode_upload(data).gray

    assert gray.shape == (expected.shape if orientation < 5 else (32, 48))
    assert np.array_equal(gray, expected)


def test_a_jpeg_with_a_malformed_exif_tag_beside_its_orientation_is_decoded_upright(emr, stored):
    """Pillow's exif_transpose rewrites the EXIF block and raised struct.error on such a
    tag (ASCII where a number belongs): the upload was a 500."""
    malformed = _jpeg_with_exif(PORTRAIT, [(0x0109, 2, 4, b"abc\0"), _orientation(6)])
    with pytest.raises(struct.error):
        ImageOps.exif_transpose(Image.open(io.BytesIO(malformed)))

    response = post_file(emr, malformed, "turned.jpg")

    assert (response.status_code, response.json()["status"]) == (202, "queued")
    upright = decode_upload(_jpeg_with_exif(PORTRAIT, [_orientation(6)])).gray
    assert np.array_equal(decode_upload(malformed).gray, upright)
    assert upright.shape == (32, 48)


def test_a_png_with_a_few_ancillary_chunks_still_decodes():
    from tests.ingestion.test_bad_inputs import png_padded_with_chunks

    padded = decode_upload(png_padded_with_chunks(990)).gray
    np.testing.assert_array_equal(padded, decode_upload(PNEUMONIA_PNG.read_bytes()).gray)


def test_an_implicit_vr_radiograph_with_two_full_voi_luts_is_read():
    """LUT Data's dictionary VR is "US or OW": counted as numbers, two presets of 65,536
    entries passed the 100,000 values the walk allows, and a real CR was refused (diff
    review). pydicom keeps such a value as bytes."""
    from pydicom.dataset import Dataset

    presets = []
    for n in range(2):
        item = Dataset()
        item.add_new(0x00283002, "US", [0, 0, 16])  # LUT Descriptor: 65,536 entries of 16 bits
        item.add_new(0x00283006, "OW", (np.arange(65536, dtype=np.uint32) * (n + 1) % 65536).astype("<u2").tobytes())
        presets.append(item)
    data = make_dicom(
        (np.arange(256 * 256, dtype=np.uint16) % 4096).reshape(256, 256),
        transfer_syntax="1.2.840.10008.1.2",
        VOILUTSequence=presets,
    )

    assert decode_upload(data).gray.shape == (256, 256)


@pytest.mark.parametrize("padding_value", [0, 4095])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_pixel_padding_is_left_out_of_the_range_and_shown_black(padding_value, photometric):
    """Counted in the image's own range, a border of padding washed the lungs out (0) or
    darkened them (4095), and turned a normal film into pneumonia at 1.0 (ingestion review)."""
    lungs = (1000 + np.add.outer(np.arange(64), np.arange(96)) * 5).astype(np.uint16)  # 1000..2790
    padded = np.full((64, 176), padding_value, dtype=np.uint16)
    padded[:, 40:136] = lungs
    bits = {"BitsStored": 12, "HighBit": 11, "PhotometricInterpretation": photometric}

    alone = decode_upload(make_dicom(lungs, **bits)).gray
    gray = decode_upload(make_dicom(padded, PixelPaddingValue=padding_value, **bits)).gray

    np.testing.assert_array_equal(gray[:, 40:136], alone)
    assert (gray[:, :40] == 0).all() and (gray[:, 136:] == 0).all()


def test_a_pixel_padding_range_covers_every_value_between_its_limits():
    picture = (1000 + np.add.outer(np.arange(64), np.arange(64)) * 10).astype(np.uint16)
    padded = picture.copy()
    padded[:, :8] = np.arange(64)[:, None] % 5  # values 0 to 4, all padding
    gray = decode_upload(
        make_dicom(padded, BitsStored=12, HighBit=11, PixelPaddingValue=0, PixelPaddingRangeLimit=4)
    ).gray

    assert (gray[:, :8] == 0).all()
    # The picture alone sets the range (1080 to 2260): with the padding in it, 1080 was 122.
    assert (gray[:, 8:].min(), gray[:, 8:].max()) == (0, 255)


def test_an_acr_nema_file_without_a_photometric_interpretation_reads_as_monochrome2():
    """Older than DICOM, such files may leave it out; they were refused as undecodable
    (imaging review)."""
    twelve_bit = a_picture(dtype=np.uint16) >> 4
    named = make_dicom(twelve_bit, preamble=False, transfer_syntax="1.2.840.10008.1.2", BitsStored=12, HighBit=11)
    dataset = pydicom.dcmread(io.BytesIO(named), force=True)
    del dataset.PhotometricInterpretation
    unnamed = io.BytesIO()
    dataset.save_as(unnamed, implicit_vr=True, little_endian=True)

    decoded = decode_upload(unnamed.getvalue())

    np.testing.assert_array_equal(decoded.gray, decode_upload(named).gray)
    assert decoded.metadata["photometric_interpretation"] == ""  # what the file says, not what was assumed
