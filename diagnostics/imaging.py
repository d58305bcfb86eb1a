"""From uploaded bytes to the grayscale image the model reads.

One decoder serves both the upload path and the worker (`load_grayscale`), so a study is
predicted on exactly the pixels that were checked, hashed and displayed at upload.

Refusals raise `RejectedUpload(status_code, detail)`:
- 400: the upload is empty;
- 413: more bytes than MAX_UPLOAD_BYTES, or more pixels than MAX_IMAGE_PIXELS (checked
  from the header, before decoding: decompression bombs, huge Rows x Columns);
- 415: the content is not PNG, JPEG or DICOM (sniffed from magic bytes; names and
  Content-Type headers are ignored), or is a polyglot of several formats;
- 422: the type is right but the file is truncated, corrupt, not an image (DICOM SR,
  RT Plan, ...) or its pixels cannot be decoded.
The ingestion service adds one that is no fault of the file: 503 when the storage
cannot take it just now (`StorageUnavailable`, with a Retry-After).
Messages never quote values read from the file: those may be PHI.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from config.errors import STORAGE_RETRY_AFTER_SECONDS
from mlcore.preprocessing import pil_to_grayscale, pixel_sha256

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"
DISPLAY_MAX_SIDE = 1024

# Reasons a radiograph is outside the model's intended use. Studies store the codes.
WARNINGS = {
    "not_chest": "The body part examined is not the chest: the model is validated on chest radiographs only.",
    "not_radiograph": "The modality is not CR or DX: the model is validated on plain radiographs only.",
    "adult": "The patient is an adult: the model learned from children's chest radiographs (aged 1 to 5) only.",
    "child_outside_trained_ages": "The patient is a child under 1 or over 5: the model learned from children's "
    "chest radiographs (aged 1 to 5) only.",
    "not_frontal": "The view is not frontal (PA or AP): the model learned from frontal chest radiographs only.",
    "first_frame_only": "The DICOM holds several frames: only the first was analysed, and it is the one shown.",
    "same_film_other_patient": "The same image is filed under another patient ID of this hospital: check which "
    "patient it belongs to before acting on this result.",
}
WARNING_CHOICES = list(WARNINGS.items())  # the API schema's WarningCodeEnum

# Formats we can name when refusing them (first bytes -> what it is).
_FOREIGN_MAGIC = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or Office document)"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF container (WebP, AVI or WAV)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "a Windows executable"),
    (b"#!", "a script"),
    (PNG_MAGIC, "a PNG image"),
    (JPEG_MAGIC, "a JPEG image"),
]


class RejectedUpload(Exception):
    """An upload refused with an HTTP status and a message a human can act on."""

    # HTTP headers the refusal's response carries (Retry-After on a 503).
    headers: dict[str, str] = {}

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class StorageUnavailable(RejectedUpload):
    """The file is fine, but the storage could not take it just now: 503, retry later."""

    headers = {"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)}

    def __init__(self):
        super().__init__(
            503,
            "The image could not be saved just now because Pleura's image storage is unavailable. "
            "Nothing was stored: please send it again in a minute.",
        )


class NotAnImage(RejectedUpload):
    """A well-formed DICOM object that is not a picture (SR, RT Plan, ...): 422."""

    def __init__(self, detail: str):
        super().__init__(422, detail)


class OtherStudy(RejectedUpload):
    """An instance sent to one study's URL that belongs to another study: 409."""

    def __init__(self):
        super().__init__(409, "This instance belongs to another study than the one named in the URL.")


class InstanceConflict(RejectedUpload):
    """A SOP Instance UID stored before for another image or patient: 409, nothing stored."""

    def __init__(self):
        super().__init__(
            409,
            "An instance with this SOP Instance UID was already received for a different image or patient. "
            "Each DICOM instance needs a UID of its own: check the sending device. Nothing was stored.",
        )


class AccessionConflict(RejectedUpload):
    """An instance sent again with a typed accession number other than its study's: 409."""

    def __init__(self):
        super().__init__(
            409,
            "This instance was received before under another accession number, which Pleura keeps: a study "
            "is not moved to another order by sending it again. Nothing was stored or changed.",
        )


class IdempotencyKeyReused(RejectedUpload):
    """An Idempotency-Key sent before with another file or identifiers: 422, nothing stored."""

    def __init__(self):
        super().__init__(
            422,
            "This Idempotency-Key was used before for a different file or different identifiers. "
            "Send each new upload with a key of its own. Nothing was stored.",
        )


class PatientMismatch(RejectedUpload):
    """A typed patient ID that contradicts the DICOM header's: 409, nothing stored."""

    def __init__(self):
        super().__init__(
            409,
            "The patient ID given differs from the Patient ID in the file's DICOM header. Check that this is "
            "the right patient's image, or leave the patient ID empty to use the header's. Nothing was stored.",
        )


@dataclass
class DecodedImage:
    format: str  # Study.Format value: "dcm", "png" or "jpg"
    gray: np.ndarray  # uint8, H x W
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    identifier_problem: str = ""  # why a new upload's header identifiers cannot be filed

    @cached_property
    def pixel_sha256(self) -> str:
        # Read by the new study and, for an instance sent before, by the comparison with
        # it: hashed once (megabytes of pixels).
        return pixel_sha256(self.gray)


def describe_warnings(codes: list[str]) -> list[dict[str, str]]:
    return [{"code": code, "message": WARNINGS.get(code, code)} for code in codes]


def sniff(data: bytes) -> str:
    """The format of `data` from its content alone: "dcm", "png" or "jpg"."""
    if not data:
        raise RejectedUpload(400, "The file is empty.")
    if len(data) >= 132 and data[128:132] == DICOM_MAGIC:
        _refuse_polyglot_preamble(data[:128])
        return "dcm"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpg"
    if data.startswith(DICOM_MAGIC) or _looks_like_bare_dicom(data):
        return "dcm"
    raise RejectedUpload(415, f"This file is {_describe_foreign(data)}; send a PNG, JPEG or DICOM radiograph.")


def _refuse_polyglot_preamble(preamble: bytes) -> None:
    # The 128-byte preamble may legally hold anything, which is how polyglot files hide a
    # second format; a radiograph has no reason to carry one.
    for magic, what in _FOREIGN_MAGIC:
        if magic != b"II*\x00" and magic != b"MM\x00*" and preamble.startswith(magic):
            raise RejectedUpload(415, f"This file is both DICOM and {what} (a polyglot file); it is refused.")


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Old ACR-NEMA style files start straight with a group 0008 (or 0002) element."""
    if len(data) < 8:
        return False
    group_le, element_le = struct.unpack("<HH", data[:4])
    group_be, element_be = struct.unpack(">HH", data[:4])
    return (group_le in (0x0002, 0x0008) and element_le < 0x0100) or (group_be == 0x0008 and element_be < 0x0100)


def _describe_foreign(data: bytes) -> str:
    for magic, what in _FOREIGN_MAGIC:
        if data.startswith(magic):
            return what
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "an XML or SVG document"
    if head.startswith((b"{", b"[")):
        return "JSON or another text format"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "of an unknown type"
    return "plain text"


def check_size(data: bytes) -> None:
    limit = settings.MAX_UPLOAD_BYTES
    if len(data) > limit:
        raise RejectedUpload(413, f"The file is {_mb(len(data))}, more than the {_mb(limit)} limit.")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def decode_upload(data: bytes) -> DecodedImage:
    """Sniff, check limits, decode. The one entry point for bytes from outside."""
    check_size(data)
    kind = sniff(data)
    try:
        decoded = _decode_dicom(data) if kind == "dcm" else _decode_raster(data, kind)
    except BaseException:
        _return_freed_memory()  # a file refused halfway may have taken as much as any
        raise
    if decoded.gray.size >= _TRIM_AFTER_PIXELS:
        _return_freed_memory()
    return decoded


# A radiograph's grey levels spread over much of the scale (a standard deviation of about
# 60 on a training image, and 2.0 with its 256 levels squeezed into 8); one shade
# throughout, give or take compression noise, is a blank frame or an export error.
MIN_GREY_SPREAD = 1.0
MIN_SIDE = 32
# The level 99% of a picture's pixels are at or below (`bright_level`): 131 at the lowest
# among 5,219 real radiographs (the shared training set and DICOM files); a 16-bit VOI LUT
# holding 12-bit values, or 16-bit samples read at 8 bits, gave 16 or less, and a normal
# chest so darkened was labelled pneumonia at 1.0 (imaging review).
MIN_BRIGHT_LEVEL = 32
# How much neighbouring pixels differ, on average, against the picture's own spread, seen
# at about 128 pixels a side: anatomy changes smoothly there (0.135 at the median of the
# 5,240 training radiographs, DICOM samples and fixtures, 0.279 at most; 0.27 to 0.49 for a
# radiograph of 64 to 224 pixels with noise of 10 grey levels added), where noise does not
# (1.13 for random pixels, 1.22 for a JPEG 2000 codestream damaged past its header, which
# decodes without complaint into blobs). The model read both as a finding at 80 to 99.5%
# (EMR review).
MAX_NEIGHBOUR_CHANGE = 0.6
_SMOOTHNESS_SIDE = 128


def check_content(gray: np.ndarray) -> None:
    """Refuse, at upload, a picture that shows nothing: the model read blank, uniform and
    1-pixel images as pneumonia at 99.99% (ingestion review), and a doctor or an EMR would
    see that label with nothing to say the picture was empty. Not part of decoding, which
    the portal's display of a stored study repeats."""
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise RejectedUpload(
            422,
            f"The image is {width}x{height} pixels: too small to be a radiograph (at least {MIN_SIDE} pixels a "
            f"side). Send the full-size image.",
        )
    # A strided sample: the spread of a 40-megapixel image without a float copy of it.
    step = max(1, int((gray.size / 1_000_000) ** 0.5))
    sample = gray[::step, ::step]
    if float(sample.std()) < MIN_GREY_SPREAD:
        raise RejectedUpload(
            422,
            "The image is one shade of grey throughout: it shows no anatomy. Check the export from the "
            "modality or the PACS, and send the radiograph itself.",
        )
    if (brightest := bright_level(sample)) < MIN_BRIGHT_LEVEL:
        raise RejectedUpload(
            422,
            f"The image is nearly black: its brightest pixels reach {brightest} of 255, where a radiograph's "
            f"bones and mediastinum are bright. Its window or lookup table is likely wrong; check the export from "
            f"the modality or the PACS.",
        )
    if neighbour_change(gray) > MAX_NEIGHBOUR_CHANGE:
        raise RejectedUpload(
            422,
            "The image is noise, not a radiograph: neighbouring pixels change as much as distant ones, where "
            "anatomy changes smoothly. The file may be damaged in its pixel data; send it again from the modality "
            "or the PACS.",
        )


def bright_level(gray: np.ndarray) -> int:
    """The grey level that 99% of the pixels are at or below."""
    counts = np.bincount(gray.ravel(), minlength=256)
    return int(np.searchsorted(np.cumsum(counts), 0.99 * gray.size))


def neighbour_change(gray: np.ndarray) -> float:
    """The mean difference between neighbouring pixels over the standard deviation of all,
    the larger of across and down, in the picture reduced (by box averages, which quiet a
    detector's own noise as a viewer's fitted window does) to about 128 pixels a side."""
    picture = Image.fromarray(gray)
    factor = max(1, round(max(picture.size) / _SMOOTHNESS_SIDE))
    small = np.asarray(picture.reduce(factor) if factor > 1 else picture, dtype=np.float32)
    spread = float(small.std())
    if spread == 0 or min(small.shape) < 2:
        return 0.0
    across = float(np.abs(np.diff(small, axis=1)).mean())
    down = float(np.abs(np.diff(small, axis=0)).mean())
    return max(across, down) / spread


# Smaller images are the everyday radiographs: nothing worth returning, and no call.
_TRIM_AFTER_PIXELS = 16_000_000


def _return_freed_memory() -> None:
    """Give the memory a large decode freed back to the system. glibc raises its
    threshold for allocating large blocks apart (mmap) as they are freed, so Pillow's
    16 MB blocks came to live in the decoding thread's arena and stayed: the worker's 8
    storage threads, decoding 8 half-transparent RGBA PNGs of 60 MP one after another,
    kept a peak of 5.7 GB where each decode takes about 0.9 GB; trimmed, 1.3 GB
    (bench/worker_decode_memory.py). A web process kept its upload's in the same way.
    Nothing to do where the C library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _decode_dicom(data: bytes) -> DecodedImage:
    # Imported here: diagnostics.dicom imports RejectedUpload from this module.
    from diagnostics import dicom

    try:
        ds = dicom.read_dataset(data)
        dicom.check_image_attributes(ds)
        dicom.check_uids(ds)
        gray = dicom.to_grayscale(ds)
        meta = dicom.metadata(ds)
        meta["rows"], meta["columns"] = gray.shape
        warnings = [*dicom.intended_use_warnings(meta, dicom.patient_age_years(ds)), *dicom.frame_warnings(ds)]
        return DecodedImage("dcm", gray, meta, warnings, identifier_problem=dicom.identifier_problem(ds))
    except (RejectedUpload, MemoryError):
        raise
    except Exception as exc:  # a hostile or broken header reaches code that trusts its types
        # The type only: the values are the patient's.
        logger.warning("DICOM refused: %s while reading it", type(exc).__name__)
        raise RejectedUpload(422, "The DICOM file is malformed and could not be read.") from exc


def _decode_raster(data: bytes, kind: str) -> DecodedImage:
    pillow_format = "PNG" if kind == "png" else "JPEG"
    name = "PNG" if kind == "png" else "JPEG"
    if kind == "png":
        _check_png_structure(data)
    elif not data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
        raise RejectedUpload(422, "The JPEG is truncated or has extra data after the image (polyglot?).")
    else:
        _check_jpeg_structure(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[pillow_format])
            _check_pixels(*image.size)
            image.load()
    except RejectedUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RejectedUpload(413, f"The {name} declares more pixels than allowed (a decompression bomb?).") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as exc:
        raise RejectedUpload(422, f"The {name} file is truncated or corrupt and could not be decoded.") from exc
    try:
        gray = _raster_to_gray(_upright(image) if kind == "jpg" else image)
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise RejectedUpload(422, f"The {name} file is corrupt and could not be decoded.") from exc
    meta = {"rows": gray.shape[0], "columns": gray.shape[1], "photometric_interpretation": ""}
    return DecodedImage(kind, gray, meta, [])


# EXIF Orientation (tag 0x0112) -> the transpose that shows the picture upright.
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """The JPEG's pixels turned as its EXIF Orientation says. Not ImageOps.exif_transpose:
    it also rewrites the EXIF block, which raised on any other tag of an unexpected type
    (a 500 for a picture that decodes); only the pixels are kept here."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError, struct.error):
        return image  # an unreadable EXIF block says nothing about orientation
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _check_pixels(width: int, height: int) -> None:
    limit = settings.MAX_IMAGE_PIXELS
    if width < 1 or height < 1:
        raise RejectedUpload(422, "The image has no pixels.")
    if width * height > limit:
        raise RejectedUpload(413, f"The image is {width}x{height} pixels, more than the limit of {limit:,} pixels.")


# Chunks other than image data a PNG may carry. Real files carry a handful (colour, text,
# time); 8.7 million empty ones in 100 MB took 30 s of a web process's CPU to read, and
# the worker reads them again (ingestion review).
PNG_MAX_OTHER_CHUNKS = 1000


# PNG colour types with more than a grey sample: RGB, grey + alpha, RGBA.
_PNG_COLOUR_OR_ALPHA = frozenset({2, 4, 6})


def _check_png_samples(bit_depth: int, colour_type: int) -> None:
    """Pillow reads 16-bit colour or alpha PNGs at 8 bits, keeping each sample's high byte:
    a 12-bit radiograph saved so came out nearly black, and a normal chest was labelled
    pneumonia at 1.0 (imaging review). Pillow has no 16-bit colour mode to read them into."""
    if bit_depth == 16 and colour_type in _PNG_COLOUR_OR_ALPHA:
        raise RejectedUpload(
            422,
            "The PNG stores 16-bit colour or transparency, which Pleura can read only at 8 bits, losing most "
            "of a radiograph's grey levels: export it as a 16-bit greyscale PNG without transparency, or as DICOM.",
        )


def _check_png_structure(data: bytes) -> None:
    """Walk the chunks: dimensions are checked before decoding, nothing may follow IEND,
    and chunks besides the image data are few."""
    offset = len(PNG_MAGIC)
    first, others = True, 0
    while True:
        if offset + 8 > len(data):
            raise RejectedUpload(422, "The PNG file is truncated: it ends before its last chunk.")
        length, chunk = struct.unpack(">I4s", data[offset : offset + 8])
        if first:
            if chunk != b"IHDR" or length != 13 or offset + 16 > len(data):
                raise RejectedUpload(422, "The PNG file is corrupt: it does not start with an image header.")
            width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[offset + 8 : offset + 18])
            _check_pixels(width, height)
            _check_png_samples(bit_depth, colour_type)
        elif chunk == b"IHDR":
            raise RejectedUpload(422, "The PNG file is corrupt: it has more than one image header.")
        offset += 12 + length
        if chunk == b"IEND":
            break
        # Image data under a kilobyte a chunk counts too: millions of empty IDATs cost what
        # empty text chunks did (diff review).
        others += 0 if first or (chunk == b"IDAT" and length >= 1024) else 1
        first = False
        if others > PNG_MAX_OTHER_CHUNKS:
            raise RejectedUpload(
                422, f"The PNG file carries more than {PNG_MAX_OTHER_CHUNKS:,} chunks besides its image data."
            )
    if offset > len(data):
        raise RejectedUpload(422, "The PNG file is truncated.")
    if data[offset:].strip(b"\x00"):
        raise RejectedUpload(422, "The PNG file has extra data after the image ends (a polyglot file?).")


# Segments (and stray or fill bytes) a JPEG may carry before its image data. Real files
# carry a dozen, up to a few hundred with an ICC profile split in pieces; Pillow reads each
# in a Python loop and keeps every APP segment: 26 million empty ones in 100 MB took 24 s
# of a web process's CPU and 3.5 GB (bad-input review).
JPEG_MAX_SEGMENTS = 1000
_NOT_A_MARKER = re.compile(rb"[^\xff]+")
# Markers with no length after them (JPEG's TEM, RSTn, SOI, EOI), and FF00, which decoders
# step over as two bytes: walked as having a length, it hid from this walk the segments
# Pillow then read (diff review).
_JPEG_STANDALONE_MARKERS = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})
# Reserved JPEG extensions (JPG, JPGn), which Pillow reads as having no length where the
# standard gives them one: a walk that agrees with Pillow's refuses them.
_JPEG_RESERVED_MARKERS = frozenset({0xC8, *range(0xF0, 0xFE)})


def jpeg_markers(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset) of each marker of a JPEG codestream after its SOI, up to and with its
    first scan (SOS), as decoders walk them: stray bytes and fill bytes are skipped. These
    count with the segments: past JPEG_MAX_SEGMENTS the file is refused (422), in strides
    of C speed however it is padded."""
    offset, steps = 2, 0
    while offset + 1 < len(data):
        if steps > JPEG_MAX_SEGMENTS:
            raise RejectedUpload(
                422, f"The JPEG image carries more than {JPEG_MAX_SEGMENTS:,} segments before its pixel data."
            )
        if stray := _NOT_A_MARKER.match(data, offset):
            steps, offset = steps + stray.end() - offset, stray.end()
            continue
        marker, steps = data[offset + 1], steps + 1
        if marker == 0xFF:  # a fill byte
            offset += 1
            continue
        yield marker, offset
        if marker == 0xDA:
            return
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
        else:  # a length under 2 is read as 2, as Pillow reads it
            offset += 2 + max(2, int.from_bytes(data[offset + 2 : offset + 4], "big"))


def _check_jpeg_structure(data: bytes) -> None:
    """Walk the segments as Pillow will, before Pillow does: they are few, and none is one
    that Pillow reads differently from the standard."""
    for marker, _offset in jpeg_markers(data):
        if marker in _JPEG_RESERVED_MARKERS:
            raise RejectedUpload(422, "The JPEG file uses a reserved marker that Pleura does not read.")


def _raster_to_gray(image: Image.Image) -> np.ndarray:
    # The converter training uses too: uploads and training files become the same pixels.
    return pil_to_grayscale(image)


def display_png(gray: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """The portal's picture: the same windowed pixels, at most `max_side` on the long side."""
    image = Image.fromarray(gray, mode="L")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    # zlib level 1: 1.7 ms instead of 6.9 ms for a 224 px radiograph, 16% larger; the
    # upload request pays for it while the doctor waits.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_original(study) -> bytes:
    """The stored original's bytes, as uploaded."""
    with study.original_file.open("rb") as handle:
        return handle.read()


class StoredImageError(Exception):
    """A stored original that could not be turned into grey pixels; the subclass says
    whose fault it is, and each caller decides what that means for its work."""


class StoredFileMissing(StoredImageError):
    """No file, or the storage says it is gone: only sending the image again mends it."""


class StoredFileRefused(StoredImageError):
    """The storage answered and refused this one object (a permission, S3's 403)."""


class StoredFileUnreachable(StoredImageError):
    """The storage could not be read just now (an outage): the file may well be there."""


class StoredFileUndecodable(StoredImageError):
    """The file was read but no longer decodes (damaged, or a decoder that changed)."""


def load_grayscale(
    study, *, passthrough: tuple[type[BaseException], ...] = (), decoding=contextlib.nullcontext
) -> np.ndarray:
    """Decode a stored study's original again, exactly as at upload (for the worker and
    the training export), or raise the StoredImageError that says why not. Errors in
    `passthrough` (a time limit, a lost database) are raised as they are. The decode,
    not the read, runs inside `decoding()` (the worker's pixel budget)."""
    from diagnostics import media  # the storage's own words: a refusal or an outage

    if not study.original_file:
        raise StoredFileMissing("no file")
    try:
        data = read_original(study)
    except passthrough:
        raise
    except FileNotFoundError as exc:
        raise StoredFileMissing(type(exc).__name__) from exc
    except Exception as exc:  # whatever the backend raises (OSError on disk, botocore on S3)
        unreadable = StoredFileRefused if media.refused_object(exc) else StoredFileUnreachable
        raise unreadable(type(exc).__name__) from exc
    try:
        with decoding():
            return decode_upload(data).gray
    except passthrough:
        raise
    except Exception as exc:  # decoders of hostile files raise anything
        raise StoredFileUndecodable(type(exc).__name__) from exc
