"""DICOMweb STOW-RS (PS3.18 10.5): store several DICOM instances from one request.

`split_multipart_related` cuts a `multipart/related; type="application/dicom"` body into
parts; `store_instances` runs each part through the same ingestion service as every
other upload and builds the DICOM JSON response (Referenced / Failed SOP Sequences).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from django.db import DatabaseError

from diagnostics import services
from diagnostics.imaging import InstanceConflict, NotAnImage, OtherStudy, RejectedUpload, StorageUnavailable
from diagnostics.models import Study

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON_MEDIA_TYPE = "application/dicom+json"
MAX_INSTANCES = 100

# Failure Reason (0008,1197) values, PS3.18 Table 10.5.3-1 / PS3.4 Annex GG.
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111  # stored before, for another image or patient
# Implementation-specific (PS3.18 I.2.2 allows them; the A9xx range, as other servers use):
# the instance's Study Instance UID is not the one in the request URL.
FAILURE_OTHER_STUDY = 0xA901

log = logging.getLogger(__name__)

_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE_RE = re.compile(r'(?:^|;)\s*type="?([^";]+)"?', re.IGNORECASE)


class StowError(Exception):
    """The request as a whole is refused (bad payload, wrong media type)."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class Part:
    content_type: str
    data: bytes


@dataclass
class StowResult:
    status_code: int
    body: dict[str, Any]
    stored: list[Study] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


def split_multipart_related(body: bytes, content_type: str) -> list[Part]:
    """The body parts of a multipart/related request whose root type is application/dicom."""
    root_type = (_TYPE_RE.search(content_type) or [None, ""])[1].strip().lower()
    if root_type and root_type != DICOM_MEDIA_TYPE:
        raise StowError(415, f'Only type="{DICOM_MEDIA_TYPE}" is supported in multipart/related requests.')
    match = _BOUNDARY_RE.search(content_type)
    if not match:
        raise StowError(400, "The multipart/related Content-Type has no boundary parameter.")
    delimiter = b"--" + match[1].strip().encode("latin-1")
    # Offsets into the body, not bytes.split and friends: each part's content is copied
    # once, where splitting, stripping and partitioning copied it four times over (a body
    # may hold 100 MB of instances).
    # A part more than allowed is enough to refuse: 100 MB of empty parts, all found and
    # parsed first, took 30 s of CPU and 3.3 GB before the 413 (bad-input review).
    found = _offsets(body, delimiter, most=MAX_INSTANCES + 2)
    if len(found) > MAX_INSTANCES + 1:
        raise StowError(413, f"At most {MAX_INSTANCES} instances may be sent in one request.")
    closing = found[-1] + len(delimiter) if found else 0
    if len(found) < 2 or not body.startswith(b"--", closing):
        raise StowError(400, "The multipart/related body is malformed: its closing boundary is missing.")
    return [_parse_part(body, start + len(delimiter), end) for start, end in pairwise(found)]


def _offsets(body: bytes, delimiter: bytes, *, most: int) -> list[int]:
    """Where the delimiter occurs in `body`: the first `most` places."""
    found, at = [], body.find(delimiter)
    while at != -1 and len(found) < most:
        found.append(at)
        at = body.find(delimiter, at + len(delimiter))
    return found


def _parse_part(body: bytes, start: int, end: int) -> Part:
    """The part between `start` (just after its delimiter) and `end` (the next one)."""
    if body.startswith(b"\r\n", start, end):  # the end of the delimiter's line
        start += 2
    if body.startswith(b"\r\n", start, end):  # a blank line at once: a part with no headers
        head, content_start = b"", start + 2
    else:
        blank_line = body.find(b"\r\n\r\n", start, end)
        if blank_line == -1:
            raise StowError(400, "A multipart body part has no blank line between its headers and content.")
        head, content_start = body[start:blank_line], blank_line + 4
    if body.endswith(b"\r\n", content_start, end):  # the line break before the next delimiter
        end -= 2
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip():
            headers[name.strip().lower()] = value.strip()
    part_type = headers.get("content-type", DICOM_MEDIA_TYPE).split(";")[0].strip().lower()
    return Part(content_type=part_type, data=body[content_start:end])


def store_instances(
    *, hospital, parts: list[Part], user=None, key=None, request=None, study_instance_uid: str = ""
) -> StowResult:
    """Store each part; 200 if all were stored, 202 if some failed, 409 if none was stored,
    503 (with Retry-After) if none was stored because the storage is unavailable.

    With `study_instance_uid` (a request to /studies/{uid}), instances of other studies fail.
    """
    referenced, failed, stored = [], [], []
    storage_down = False
    for part in parts:
        if part.content_type != DICOM_MEDIA_TYPE:
            # Named by its UIDs when it is DICOM all the same (labelled application/octet-stream):
            # a failure naming no instance left the sender to guess which part it was (EMR review).
            failed.append(_failed_item(_uids_of(part.data), FAILURE_CANNOT_UNDERSTAND))
            continue
        try:
            study, _queued = services.ingest_upload(
                hospital=hospital,
                data=part.data,
                source=Study.Source.DICOMWEB,
                user=user,
                key=key,
                request=request,
                dicom_only=True,
                study_instance_uid=study_instance_uid,
            )
        except StorageUnavailable:
            storage_down = True
            failed.append(_failed_item(_uids_of(part.data), FAILURE_OUT_OF_RESOURCES))
            continue
        except RejectedUpload as exc:
            failed.append(_failed_item(_uids_of(part.data), _failure_reason(exc)))
            continue
        except DatabaseError:
            raise  # an outage: the whole request is answered 503, and the sender retries it
        except Exception:
            # One instance meeting an error of Pleura's own must not cost the others: the
            # instances before it are stored already, and the sender is told which failed.
            log.exception("STOW-RS: an instance could not be stored")
            failed.append(_failed_item(_uids_of(part.data), FAILURE_PROCESSING))
            continue
        stored.append(study)
        referenced.append(_referenced_item(study))
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if not referenced and storage_down:
        # Nothing stored, and not for the instances' fault: the sender should retry them.
        return StowResult(status_code=503, body=body, headers=dict(StorageUnavailable.headers))
    if not referenced:
        status = 409
    elif failed:
        status = 202
    else:
        status = 200
    return StowResult(status_code=status, body=body, stored=stored)


def _failure_reason(exc: RejectedUpload) -> int:
    if isinstance(exc, OtherStudy):
        return FAILURE_OTHER_STUDY
    if isinstance(exc, InstanceConflict):
        return FAILURE_DUPLICATE_SOP_INSTANCE
    if exc.status_code == 413:
        return FAILURE_OUT_OF_RESOURCES
    if isinstance(exc, NotAnImage):
        return FAILURE_SOP_CLASS_NOT_SUPPORTED
    return FAILURE_CANNOT_UNDERSTAND


def _uids_of(data: bytes) -> tuple[str, str] | None:
    """(SOP class, SOP instance) of a refused part, when its header can be read at all."""
    from diagnostics import dicom

    try:
        ds = dicom.read_dataset(data)
    except RejectedUpload:
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_instance or len(sop_instance) > 64 or len(sop_class) > 64:
        return None
    return sop_class, sop_instance


def _referenced_item(study: Study) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [study.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [study.sop_instance_uid]},
    }


def _failed_item(uids: tuple[str, str] | None, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if uids:
        item["00081150"] = {"vr": "UI", "Value": [uids[0]]}
        item["00081155"] = {"vr": "UI", "Value": [uids[1]]}
    item["00081197"] = {"vr": "US", "Value": [reason]}
    return item
