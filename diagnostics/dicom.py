"""DICOM: reading real-world files safely and turning them into the model's grayscale.

Pure functions over bytes, pydicom datasets and numpy arrays; no ORM. Every refusal is
a `RejectedUpload` whose message never quotes a value from the file (values may be PHI).
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pydicom.values import converters as pydicom_converters

from diagnostics import dicom_walk
from diagnostics.imaging import NotAnImage, RejectedUpload, jpeg_markers

# pydicom's own log lines can quote element values (patient names included): keep them out
# of the logs, and do not let its validation warn about values we never store unchecked.
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

# Modalities the model was validated on: computed and digital radiography.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG"})
# View Position (0018,5101): posterior-anterior and anterior-posterior, with any modifier.
FRONTAL_VIEWS = ("PA", "AP")
# SOP classes that carry pixel data but are not pictures a radiologist reads.
NON_IMAGE_PIXEL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    }
)
UID_MAX_LENGTH = 64
# 32-bit pixels cost this many times the memory of 8- or 16-bit ones to decode; their
# limit is MAX_IMAGE_PIXELS divided by it.
WIDE_PIXEL_COST = 4
_ALLOWED_BITS_ALLOCATED = frozenset({1, 8, 16, 32})
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file (with or without preamble and file meta); pixel data stays encoded."""
    if data.startswith(b"DICM"):
        # Its preamble cut off, the file starts with the magic that follows one: read as
        # data, it was refused as a file without pixels (ingestion review).
        data = bytes(128) + data
    try:
        _guard_parsing_cost(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=True)
            # pydicom parses lazily in places: touch every element so a broken file fails here.
            for _element in ds.iterall():
                pass
    except RejectedUpload:
        raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, zlib.error) as exc:
        raise RejectedUpload(422, "The DICOM file is truncated or corrupt and could not be read.") from exc
    except Exception as exc:  # pydicom raises many types on hostile input; all mean "unreadable".
        raise RejectedUpload(422, "The DICOM file is truncated or corrupt and could not be read.") from exc
    if len(ds) == 0:
        raise RejectedUpload(422, "The DICOM file holds no data elements.")
    if not ds.file_meta.get("TransferSyntaxUID") and getattr(ds, "original_encoding", None):
        # Old ACR-NEMA style files have no file meta: record how the parser read them,
        # which is what the pixel decoders need to know.
        ds.file_meta.TransferSyntaxUID = transfer_syntax(ds)
    return ds


def _guard_parsing_cost(data: bytes) -> None:
    """Bound what pydicom will do before it does it: a deflated data set is inflated whole
    (bounded here first), and every element and value is read in Python (counted here
    first, `dicom_walk`).

    Every file with a preamble has its file meta read here (cheap): looking for the
    deflated syntax's UID in the first bytes only was passed by a meta padded past them.
    """
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, True)
        meta = _read_file_meta_info(stream)
    except Exception as exc:
        raise RejectedUpload(422, "The DICOM file meta information is corrupt.") from exc
    data_set, start = data, stream.tell()
    syntax = meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        data_set, start = _inflated(data[start:]), 0
    little_endian = _little_endian_as_pydicom_reads(data_set, start, syntax)
    try:
        dicom_walk.check_value_count(data_set, start, little_endian=little_endian)
    except dicom_walk.TooManyValues as exc:
        raise RejectedUpload(
            422,
            f"The DICOM file holds more than {dicom_walk.MAX_VALUES:,} data elements and values, or sequences "
            f"nested more than {dicom_walk.MAX_DEPTH} deep: it is not a radiograph Pleura can read.",
        ) from exc


def _inflated(deflated: bytes) -> bytes:
    limit = settings.MAX_UPLOAD_BYTES
    try:
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated, limit + 1)
    except zlib.error as exc:
        raise RejectedUpload(422, "The deflated DICOM data set is corrupt and could not be inflated.") from exc
    if len(inflated) > limit:
        raise RejectedUpload(
            413, f"The deflated DICOM data set inflates to more than the {_mb(limit)} limit (a decompression bomb?)."
        )
    return inflated


def _little_endian_as_pydicom_reads(data: bytes, start: int, syntax) -> bool:
    """The data set's byte order as pydicom's dcmread settles it. (Implicit or explicit VR
    it settles again by the data set's first element, and so does the walk.)"""
    if syntax is None:  # no file meta: an explicit first element of a group past 1023 is big endian
        explicit = data[start + 4 : start + 6].decode("latin-1") in pydicom_converters
        return not (explicit and int.from_bytes(data[start : start + 2], "little") >= 1024)
    return syntax != ExplicitVRBigEndian


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def sop_class_name(ds: Dataset) -> str:
    """What the object is, in words: the SOP class name (e.g. "Basic Text SR Storage")."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if _UID_RE.fullmatch(uid):
        name = UID(uid).name
        return name if name != uid else f"SOP class {uid}"
    modality = str(ds.get("Modality", "") or "")
    return f"modality {modality}" if modality.isalnum() and len(modality) <= 16 else "unknown SOP class"


def check_image_attributes(ds: Dataset) -> None:
    """Refuse non-images and oversized images before a single pixel is decoded."""
    if "PixelData" not in ds:
        other = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        what = sop_class_name(ds)
        if not other and "Image Storage" in what:
            # An image type without its pixels: cut short, or an element's length that
            # swallowed them. Called "not an image", STOW said its type was not supported.
            raise RejectedUpload(
                422, f"This DICOM file ({what}) is an image but its pixel data is missing: it is truncated or damaged."
            )
        raise NotAnImage(
            f"This DICOM file ({what}) "
            + ("holds floating-point data, not a radiograph." if other else "has no pixel data: it is not an image."),
        )
    if str(ds.get("SOPClassUID", "")) in NON_IMAGE_PIXEL_CLASSES:
        raise NotAnImage(f"This DICOM file ({sop_class_name(ds)}) is not a radiograph.")
    missing = [name for name in ("Rows", "Columns", "BitsAllocated") if ds.get(name) in (None, "")]
    if missing:
        raise RejectedUpload(422, f"The DICOM image lacks required attributes: {', '.join(missing)}.")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored") or bits_allocated)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise RejectedUpload(422, "The DICOM image attributes (Rows, Columns, Bits) are not valid numbers.") from exc
    if rows < 1 or columns < 1 or frames < 1:
        raise RejectedUpload(422, "The DICOM image has zero rows, columns or frames.")
    if bits_allocated not in _ALLOWED_BITS_ALLOCATED or not 1 <= bits_stored <= bits_allocated:
        raise RejectedUpload(422, "The DICOM image has an invalid Bits Allocated / Bits Stored combination.")
    if samples not in (1, 3):
        raise RejectedUpload(422, "The DICOM image must have 1 or 3 samples per pixel.")
    limit = settings.MAX_IMAGE_PIXELS
    if rows * columns * frames > limit:
        raise RejectedUpload(
            413,
            f"The DICOM image is {columns}x{rows} pixels x {frames} frame(s), more than the limit of {limit:,} pixels.",
        )
    if bits_allocated == 32 and rows * columns > limit // WIDE_PIXEL_COST:
        # 32-bit values are windowed pixel by pixel in 64-bit floats (too many values for a
        # table): a 7700x7700 image took 2.1 GB, where 16 bits take a few hundred MB.
        raise RejectedUpload(
            413,
            f"The DICOM image is {columns}x{rows} pixels of 32 bits, more than the limit of "
            f"{limit // WIDE_PIXEL_COST:,} pixels for 32-bit images.",
        )
    _check_codestream_size(ds, columns, rows, frames)
    _check_native_length(ds, rows * columns * frames * samples, bits_allocated)


def _check_native_length(ds: Dataset, values: int, bits_allocated: int) -> None:
    """Native pixel data must be as long as Rows, Columns, frames and bits say. pydicom
    refuses less and, with a warning only, reads the start of more: a DICOM whose Columns
    had been halved was stored as a garbled radiograph and predicted (ingestion review).
    Some writers pad (pydicom's MR_small_padded.dcm carries one row of zeros more, 1.6%),
    so up to a quarter more zeros are read as padding; attributes that do not describe the
    image are off by a factor (a halved Columns leaves twice the data), or leave pixels
    past the end (a Columns one short)."""
    syntax = UID(transfer_syntax(ds))
    if not syntax.is_transfer_syntax or (syntax.is_compressed and syntax != DeflatedExplicitVRLittleEndian):
        return  # encapsulated frames carry their own size (`_check_codestream_size`)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        return  # subsampled: two values for each pair of pixels; pydicom checks these itself
    expected = (values * bits_allocated + 7) // 8
    held = len(ds.PixelData)
    if held < expected:
        raise RejectedUpload(
            422,
            f"The DICOM file is truncated: its pixel data holds {held:,} of the {expected:,} bytes its Rows, "
            "Columns, frames and Bits Allocated call for.",
        )
    # Padding is zeros; data past the described image means the attributes are off, if
    # only by one column (each row then starts a pixel later: the image read sheared).
    if held > expected + 1 + expected // 4 or (held > expected + 1 and _holds_more_than_zeros(ds.PixelData, expected)):
        raise RejectedUpload(
            422,
            f"The DICOM's pixel data holds {held:,} bytes, where its Rows, Columns, frames and Bits Allocated "
            f"call for {expected:,}: its attributes do not describe its image.",
        )


def _holds_more_than_zeros(pixel_data: bytes, start: int) -> bool:
    return memoryview(pixel_data)[start:].tobytes().strip(b"\x00") != b""


# JPEG frame headers: SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS's SOF55 (0xF7).
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def _check_codestream_size(ds: Dataset, columns: int, rows: int, frames: int) -> None:
    """A compressed frame is decoded at the size its own codestream says, whatever Rows and
    Columns say: a 10 MB JPEG of 30000x30000 labelled 64x64 took 4.4 GB to decode. Its
    frame header is read first, and must agree with the attributes the limit was checked on."""
    syntax = UID(transfer_syntax(ds))
    if not syntax.is_transfer_syntax or not syntax.is_compressed:
        return  # native pixels, or an unknown encoding nothing will decode
    if syntax in (DeflatedExplicitVRLittleEndian, RLELossless):
        return  # RLE and deflate are decoded at the attributes' size
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception:  # a broken encapsulation: the decoder refuses it in words
        return
    # The whole frame is searched (a walk of segment lengths): a 64 KB segment put before
    # the header hid it from a search of the first 64 KB, and a frame whose size cannot be
    # read is refused, not decoded unchecked.
    size = codestream_size(frame)
    if size is None:
        raise RejectedUpload(422, "The DICOM's compressed image has no frame header Pleura can read.")
    declared_rows = size[1] or rows  # 0: a JPEG whose height comes later, in a DNL marker
    if (size[0], declared_rows) != (columns, rows):
        raise RejectedUpload(
            422,
            f"The DICOM's compressed image is {size[0]}x{size[1]} pixels, but its attributes say "
            f"{columns}x{rows}: the file is inconsistent.",
        )


def codestream_size(head: bytes) -> tuple[int, int] | None:
    """(columns, rows) that a JPEG, JPEG-LS or JPEG 2000 codestream's header declares, or
    None where none can be read."""
    if head[:2] == b"\xff\xd8":
        return _jpeg_frame_size(head)
    start = head.find(b"\xff\x4f\xff\x51")  # J2K: SOC, then SIZ (bare, or inside a JP2 box)
    if start < 0 or len(head) < start + 24:
        return None
    xsiz, ysiz, x_offset, y_offset = struct.unpack(">IIII", head[start + 8 : start + 24])
    return xsiz - x_offset, ysiz - y_offset


def _jpeg_frame_size(head: bytes) -> tuple[int, int] | None:
    # The walk refuses a frame padded with segments (the raster JPEG's walk): each
    # segment was a step of a Python loop here too.
    for marker, offset in jpeg_markers(head):
        if marker in _JPEG_FRAME_MARKERS:
            if offset + 9 > len(head):
                return None
            rows, columns = struct.unpack(">HH", head[offset + 5 : offset + 9])
            return columns, rows
    return None  # scan data before any frame header, or none at all


def is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters."""
    return len(value) <= UID_MAX_LENGTH and bool(_UID_RE.fullmatch(value))


def _encoding_name(ds: Dataset) -> str:
    """The transfer syntax's name from the standard, never the file's own text: an unknown
    UID is returned by pydicom as given, and it could hold anything."""
    syntax = transfer_syntax(ds)
    name = UID(syntax).name if syntax else ""
    return name if name and name != syntax else "an encoding Pleura does not know"


def check_uids(ds: Dataset) -> None:
    for name in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(name, "") or "")
        if len(value) > UID_MAX_LENGTH:
            raise RejectedUpload(422, f"The DICOM {name} is longer than {UID_MAX_LENGTH} characters.")


# The identifiers a study is filed and found under, with the rules a typed one meets
# (services.clean_identifier): cut to length, two patients whose IDs shared their first 64
# characters were filed under one, and control characters reached HL7 and CSV exports
# (ingestion review). Words only: the value is the patient's.
HEADER_IDENTIFIERS = {"PatientID": "Patient ID", "AccessionNumber": "Accession Number"}
IDENTIFIER_MAX_LENGTH = 64


def identifier_rule_broken(value: str) -> str | None:
    """The rule a patient ID or accession number breaks, typed, sent in a form or read from
    a header, or None: "too_long", "control_characters", or "not_text" (U+FFFD, which
    Django and pydicom put where bytes are not of the character set read)."""
    if len(value) > IDENTIFIER_MAX_LENGTH:
        return "too_long"
    if not value.isprintable():
        return "control_characters"
    if "\ufffd" in value:
        return "not_text"
    return None


def identifier_problem(ds: Dataset) -> str:
    """Why the header's identifiers cannot be filed, or "". Judged at upload only
    (services.ingest_upload): a study stored before the rule is decoded as ever by the
    worker, the portal's picture and the export (diff review)."""
    for keyword, label in HEADER_IDENTIFIERS.items():
        broken = identifier_rule_broken(_text(ds, keyword, max_length=None))
        if broken == "too_long":
            return f"The DICOM {label} is longer than {IDENTIFIER_MAX_LENGTH} characters, so it cannot be filed."
        if broken == "control_characters":
            return f"The DICOM {label} holds control characters, so it cannot be filed."
        if broken == "not_text":
            return f"The DICOM {label} is not valid text in the file's character set, so it cannot be filed."
    return ""


def to_grayscale(ds: Dataset) -> np.ndarray:
    """The first frame as the 8-bit grayscale the model reads (and the portal displays)."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    assumed = {}
    if not photometric and str(ds.get("SamplesPerPixel") or 1) == "1":
        # ACR-NEMA files, older than DICOM, may leave it out: one sample a pixel is grey,
        # black at zero, as DICOM viewers read them. Refused as undecodable (imaging review).
        photometric = "MONOCHROME2"
        assumed = {"photometric_interpretation": photometric}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=0, **_decoding_options(photometric), **assumed)
    except BaseException as exc:
        # Decoders raise anything from ValueError to RuntimeError; the RLE decoder (Rust,
        # through pyo3) panics on some damaged frames with a PanicException, a BaseException:
        # past `except Exception` it ended the gunicorn worker, unanswered and unaudited,
        # once per retry (imaging review).
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise RejectedUpload(422, f"The DICOM pixel data could not be decoded ({_encoding_name(ds)}).") from exc
    if arr.ndim not in (2, 3):
        raise RejectedUpload(422, "The DICOM pixel data does not have the shape its attributes describe.")
    _check_finite_values(ds)
    try:
        return _display_values(arr, ds, photometric)
    except (RejectedUpload, MemoryError):
        raise
    except Exception as exc:  # malformed LUTs and rescale values make pydicom raise anything
        raise RejectedUpload(
            422,
            "The DICOM's pixel values could not be turned into an image: its lookup tables or rescale "
            "attributes are malformed.",
        ) from exc


UNUSABLE_NUMBERS = (
    "The DICOM's rescale or window attributes are not usable numbers (not a number, infinite, or a rescale slope "
    "of 0), so its pixel values cannot be shown."
)


def _check_finite_values(ds: Dataset) -> None:
    """NaN or infinite rescale and window values (or a slope of 0) made numpy warn, not
    fail: every pixel came out the same grey, was stored, and got a prediction
    (ingestion review). Values that are not numbers at all are judged where they are read.
    Only the first window is used (`_first_window`), so only it must be usable."""
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        value = ds.get(name)
        items = value if _is_multi(value) else [value]
        for item in items[:1] if name.startswith("Window") else items:
            try:
                number = float(item)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number) or (name == "RescaleSlope" and number == 0):
                raise RejectedUpload(422, UNUSABLE_NUMBERS)


def _display_values(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if arr.ndim == 3:
        return _colour_to_gray(arr, ds, photometric)
    if photometric == "PALETTE COLOR":
        return _colour_to_gray(_apply_palette(arr, ds), ds, "RGB")
    # One inversion, named either way: the image modules require Presentation LUT Shape
    # INVERSE exactly when Photometric Interpretation is MONOCHROME1 (PS3.3 C.8.11.6.1.2),
    # so it restates that inversion; it does not undo it (a DX chest came out a negative).
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    gray = _monochrome_to_gray(arr, ds, padding_shade=255 if inverse else 0)
    return 255 - gray if inverse else gray


def _decoding_options(photometric: str) -> dict[str, bool]:
    """Monochrome pixels: a read-only view of the file's own bytes where the encoding
    allows, their bits above Bits Stored left as they are.

    `_monochrome_to_gray` masks those bits itself (in its table, or pixel by pixel), so
    pydicom's correction only cost a copy of the image, at upload and again in the
    worker. For a 2048x2048 radiograph of 12 bits in 16 (8.4 MB), decoding's peak memory
    fell from 21.2 to 12.9 MB (tracemalloc), and its CPU from 17.5 to 8.3 ms in a fresh
    process, where each copy meets new pages; in a process warmed by many uploads, 8.8
    against 7.8 ms. Colour and palette images keep pydicom's defaults.
    """
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return {"view_only": True, "correct_unused_bits": False}
    return {}


def _monochrome_to_gray(arr: np.ndarray, ds: Dataset, padding_shade: int = 0) -> np.ndarray:
    """Stored values -> 8-bit display values: bits stored, modality LUT, then the VOI LUT,
    the window or the image's own range. Padding (`_padding`) is shown as `padding_shade`,
    black once the caller has applied any inversion.

    Pixels of 8 or 16 bits can hold at most 65,536 different values, so every step is
    worked out once for each possible value, and the image is one lookup in that table.
    Step by step over every pixel, in 64-bit floats, windowing a 2048x2048 radiograph
    took 43 of the 73 ms of CPU its upload cost, and the worker decodes it again; its
    temporaries peaked at 168 MB for 8 MB of pixels (4.5 MB with the table), so a
    request near MAX_IMAGE_PIXELS could take gigabytes.
    """
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        # Wider or float pixels have too many values for a table.
        return _display_of(_mask_bits_stored(arr, ds), ds, padding_shade)
    patterns = np.dtype(f"u{arr.dtype.itemsize}")
    # Every bit pattern a pixel can have, as a value of the pixels' own type, in the
    # order of the patterns: the pixel with pattern p is mapped by table[p].
    every_value = np.arange(1 << (8 * arr.dtype.itemsize), dtype=patterns).view(arr.dtype)
    codes = arr.view(patterns)

    def occurring() -> np.ndarray:
        # Marked a slice at a time: indexing (or bincount) turns the codes into 8-byte
        # integers, 576 MB for a 60-megapixel image taken whole (ingestion review).
        seen, flat = np.zeros(every_value.size, dtype=bool), codes.reshape(-1)
        for start in range(0, flat.size, _OCCURRING_SLICE):
            seen[flat[start : start + _OCCURRING_SLICE]] = True
        return seen

    table = _display_of(_mask_bits_stored(every_value, ds), ds, padding_shade, occurring)
    if table.dtype == arr.dtype and np.array_equal(table, every_value):
        return arr.copy()  # 8-bit display values already: a lookup would change nothing
    return table[codes]


_OCCURRING_SLICE = 1 << 22


def _mask_bits_stored(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Ignore bits above Bits Stored (overlays, garbage); sign-extend signed data."""
    bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
    if bits_stored >= arr.dtype.itemsize * 8 or arr.dtype.kind not in "iu":
        return arr
    values = arr.astype(np.int64)
    mask = (1 << bits_stored) - 1
    values &= mask
    if int(ds.get("PixelRepresentation") or 0) == 1:
        sign = 1 << (bits_stored - 1)
        values = (values ^ sign) - sign
    return values


def _display_of(
    masked: np.ndarray, ds: Dataset, padding_shade: int, occurring: Callable[[], np.ndarray] | None = None
) -> np.ndarray:
    """`_apply_voi` of these stored values, their padding left out of the range and shown
    as `padding_shade`."""
    padding = _padding(masked, ds)
    gray = _apply_voi(masked, ds, occurring, padding)
    if padding is not None:
        gray[padding] = padding_shade
    return gray


def _padding(masked: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Which of `masked` (stored values, bits above Bits Stored removed) are Pixel Padding
    Value, or within Pixel Padding Range Limit of it (PS3.3 C.7.5.1.1.2): the area outside
    the detector, or around a collimated exposure, that holds no patient. None without
    padding. Counted in the image's range, a border of 0 in 12-bit pixels washed the lungs
    out, and one of 4095 darkened them; either turned a normal film into pneumonia at 1.0
    (ingestion review)."""
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    try:
        low = high = int(value)
        if limit is not None:
            low, high = sorted((low, int(limit)))
    except (TypeError, ValueError):  # absent, or an ambiguous VR left as bytes
        return None
    return (masked >= low) & (masked <= high)


def _apply_voi(
    arr: np.ndarray,
    ds: Dataset,
    occurring: Callable[[], np.ndarray] | None = None,
    padding: np.ndarray | None = None,
) -> np.ndarray:
    """`arr` is the image, or with `occurring` every value a pixel may have: then
    `occurring()` says which of them the image holds, whose range is the image's own,
    padding (a mask over `arr`) left out."""
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if not np.isfinite(values).all():
        # Finite attributes may still overflow (a slope of 1e305): one flat grey again.
        raise RejectedUpload(422, UNUSABLE_NUMBERS)
    if ds.get("VOILUTSequence"):
        from_lut = _voi_lut(arr, ds, occurring)
        if from_lut is not None:
            return from_lut
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window(values, center, width, function)
    if arr.dtype == np.uint8 and not _has_rescale(ds):
        # Already 8-bit display values: keep them, so a PNG saved from this image and the
        # DICOM itself give the model exactly the same pixels.
        return arr.astype(np.uint8)
    held = None if occurring is None else occurring()
    if padding is not None:
        held = ~padding if held is None else held & ~padding
    in_image = values if held is None else values[held]
    if in_image.size == 0:  # nothing but padding
        return np.zeros(values.shape, dtype=np.uint8)
    return _scale(values, float(in_image.min()), float(in_image.max()))


def _voi_lut(arr: np.ndarray, ds: Dataset, occurring: Callable[[], np.ndarray] | None = None) -> np.ndarray | None:
    """The first VOI LUT, scaled from its output range to 0..255; None if it is unusable.

    With `occurring`, `arr` is every value a pixel may have (a table, as for a window):
    pixel by pixel in 64-bit numbers, a 1.8 MB RLE file of 7745x7745 took 3 GB to decode
    (ingestion review). Whether the LUT's input counts as integers is judged on the values
    the image holds, as it was when the image itself was looked up."""
    try:
        modality = apply_modality_lut(arr, ds)
        held = modality if occurring is None else modality[occurring()]
        if modality.dtype.kind == "f" and np.all(np.mod(held, 1) == 0):
            modality = np.rint(modality).astype(np.int64)
        lut_out = apply_voi_lut(modality, ds, index=0, prefer_lut=True)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        # A broken LUT falls back to the window or the image's own range.
        return None
    return _scale(lut_out.astype(np.float64), 0.0, float((1 << bits) - 1))


def _has_rescale(ds: Dataset) -> bool:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return slope != 1 or intercept != 0 or "ModalityLUTSequence" in ds


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    try:
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width >= 1 else None


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: the window mapped onto 0..255."""
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = ((values - center) / width + 0.5) * 255.0
    else:
        if width == 1:
            return np.where(values <= center - 0.5, 0, 255).astype(np.uint8)
        out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _apply_palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        return apply_color_lut(arr, ds)
    except Exception as exc:
        raise RejectedUpload(422, "The DICOM palette colour lookup table is missing or invalid.") from exc


def _colour_to_gray(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise RejectedUpload(422, "The DICOM colour pixel data does not have three samples per pixel.")
    if arr.dtype == np.uint8:
        # Pillow's ITU-R 601-2 luma, the same conversion a colour PNG or JPEG upload gets.
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr), mode="RGB").convert("L"))
    rgb = arr.astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return _scale(luma, float(luma.min()), float(luma.max()))


def transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax:
        return syntax
    # Files without file meta: report what the parser found.
    if getattr(ds, "original_encoding", None):
        implicit, little = ds.original_encoding
        if implicit and little:
            return ImplicitVRLittleEndian
        if little:
            return ExplicitVRLittleEndian
        return "1.2.840.10008.1.2.2"
    return ""


def metadata(ds: Dataset) -> dict[str, Any]:
    """Study field values read from the header (PHI included: callers must not log them)."""
    return {
        "patient_id": _text(ds, "PatientID", 64),
        "patient_name": _text(ds, "PatientName", 200),
        "patient_birth_date": _date(ds.get("PatientBirthDate")),
        "patient_sex": _text(ds, "PatientSex", 16),
        "accession_number": _text(ds, "AccessionNumber", 64),
        "study_instance_uid": _text(ds, "StudyInstanceUID", 64),
        "series_instance_uid": _text(ds, "SeriesInstanceUID", 64),
        "sop_instance_uid": _text(ds, "SOPInstanceUID", 64),
        "sop_class_uid": _text(ds, "SOPClassUID", 64),
        "modality": _text(ds, "Modality", 16, upper=True),
        "body_part": _text(ds, "BodyPartExamined", 64, upper=True),
        "view_position": _text(ds, "ViewPosition", 16, upper=True),
        "study_date": _date(ds.get("StudyDate")),
        "transfer_syntax_uid": transfer_syntax(ds)[:64],
        "photometric_interpretation": _text(ds, "PhotometricInterpretation", 16, upper=True),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
    }


def _text(ds: Dataset, keyword: str, max_length: int | None, *, upper: bool = False) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if _is_multi(value):
        value = "\\".join(str(v) for v in value)
    value = str(value).strip().replace("\x00", "")
    # Upper case before cutting to length: some letters grow (German sharp s becomes SS).
    return (value.upper() if upper else value)[:max_length]


def _date(value: Any) -> date | None:
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


# The model learned from radiographs of children aged 1 to 5 (see its model card): from
# the first birthday to the sixth.
TRAINED_AGES_YEARS = (1, 6)
ADULT_AGE_YEARS = 18
_AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def patient_age_years(ds: Dataset) -> float | None:
    """Age at the study, from Patient's Age (nnnD/W/M/Y, or bare years as some archives
    write it) or else from the birth and study dates; None when the header cannot tell."""
    age = str(ds.get("PatientAge") or "").strip().upper()
    if age[:-1].isdigit() and age[-1:] in _AGE_UNITS:
        return int(age[:-1]) / _AGE_UNITS[age[-1]]
    if age.isdigit():
        return float(age)
    born, taken = _date(ds.get("PatientBirthDate")), _date(ds.get("StudyDate"))
    if born and taken and taken >= born:
        return _years_between(born, taken)
    return None


def _years_between(born: date, taken: date) -> float:
    """Whole years by the calendar, and the part of the year since the last birthday: in
    days over 365.25, a child on their first birthday was 0.9993 and flagged as under 1
    (diff review)."""
    years = taken.year - born.year - (taken < _birthday(born, taken.year))
    return years + (taken - _birthday(born, born.year + years)).days / 365.25


def _birthday(born: date, year: int) -> date:
    try:
        return born.replace(year=year)
    except ValueError:  # born on 29 February: the 28th in other years
        return date(year, 2, 28)


def intended_use_warnings(meta: dict[str, Any], age_years: float | None = None) -> list[str]:
    """Codes for a radiograph outside what the model was validated on (see imaging.WARNINGS)."""
    codes = []
    if meta["body_part"] and meta["body_part"] not in CHEST_BODY_PARTS:
        codes.append("not_chest")
    if meta["modality"] and meta["modality"] not in RADIOGRAPH_MODALITIES:
        codes.append("not_radiograph")
    if age_years is not None and age_years >= ADULT_AGE_YEARS:
        codes.append("adult")
    elif age_years is not None and not TRAINED_AGES_YEARS[0] <= age_years < TRAINED_AGES_YEARS[1]:
        # An infant's or a schoolchild's film got no word, though the words for an adult's
        # say the model learned from ages 1 to 5 only (test review).
        codes.append("child_outside_trained_ages")
    # Only frontal films were learned: a lateral view was labelled with no word (ingestion review).
    if meta.get("view_position") and not meta["view_position"].startswith(FRONTAL_VIEWS):
        codes.append("not_frontal")
    return codes


def frame_warnings(ds: Dataset) -> list[str]:
    """The first frame is the one predicted and shown (`to_grayscale`): the others were
    dropped without a word (ingestion review)."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return ["first_frame_only"] if frames > 1 else []
