"""What of a request's path may be written down: in a log line, or in the audit trail.

A path carries whatever the caller put in it, and an EMR that put a patient's ID where a
study's code belongs put it in every line that named the path (security review).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from django.http import HttpRequest
from django.urls import get_resolver, resolve

# What each URL parameter may hold to be logged as it is. A study's code is a UUID, and a
# DICOM UID has a root and a suffix at least: a patient's ID is neither, even when it is all
# digits, as many are (code review). The admin's ids are database keys, its app labels
# names; any other parameter (the admin's catch-all `url`) is never written.
_DATABASE_ID = re.compile(r"[0-9]{1,20}")
# A UUID as text, with its hyphens or without: a study's code.
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_LOGGABLE_PARAMETERS = {
    "code": UUID_TEXT,
    # DICOM's rule: no component but 0 starts with 0, so a dotted birth date (19.07.1970) is none.
    "study_instance_uid": re.compile(r"(?=.{3,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+"),
    "object_id": _DATABASE_ID,
    "id": _DATABASE_ID,
    "content_type_id": _DATABASE_ID,
    "app_label": re.compile(r"[a-z_]{1,100}"),
}
UNSERVED_PATH = "(a path Pleura does not serve)"


def loggable_path(request: HttpRequest) -> str:
    """The path, with any value in it that its parameter does not expect (a UUID where a
    study's code belongs) written as "<not a code>", and a path no route serves written as
    its first segment only: an EMR that put a patient's ID where a study's code belongs put
    it in every log line (security review)."""
    match = getattr(request, "resolver_match", None) or _resolved(request.path_info)
    if match is None:
        # Its first segment only where it is one of Pleura's own: any word there ("/SmithJohn/")
        # was written as it was (diff review).
        first = request.path.strip("/").split("/", 1)[0]
        return f"/{first}/… {UNSERVED_PATH}" if first in _own_first_segments() else UNSERVED_PATH
    path = request.path
    for name, value in match.kwargs.items():
        expected = _LOGGABLE_PARAMETERS.get(name)
        if expected is None or not expected.fullmatch(str(value)):
            path = path.replace(str(value), "<not a code>")
    return path


def _resolved(path: str):
    """The route of a request refused before its view was chosen (the database down in a
    middleware): "/" was written as a path Pleura does not serve. Called while a line is
    logged, it never raises: a URLconf that cannot be read is no route."""
    try:
        return resolve(path)
    except Exception:  # Resolver404, or anything else inside logging, where it would escape the log call
        return None


@lru_cache(maxsize=1)
def _own_first_segments() -> frozenset[str]:
    """The first segments of Pleura's own routes ("api", "studies", "admin", ...)."""
    segments, patterns = set(), list(get_resolver().url_patterns)
    while patterns:
        pattern = patterns.pop()
        first = str(pattern.pattern).lstrip("^").strip("/").split("/", 1)[0]
        if not first and hasattr(pattern, "url_patterns"):
            patterns.extend(pattern.url_patterns)  # included at the root: its own routes' segments
        elif first.isascii() and first.replace("-", "").replace("_", "").isalnum():
            segments.add(first)
    return frozenset(segments)


class SafePathFilter(logging.Filter):
    """Django's own lines name `request.path` as it is: "Forbidden (CSRF cookie not set.):
    <path>" and "Internal Server Error: <path>" put a patient's ID typed into a URL in the
    logs that pleura.request keeps it out of (security review), and their `request` extra,
    which the JSON lines write out, names it again. Both are written as `loggable_path`
    writes the path."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = getattr(request, "path", None)
        if not isinstance(path, str):
            return True
        safe = loggable_path(request)
        if isinstance(record.args, tuple):
            record.args = tuple(safe if argument == path else argument for argument in record.args)
        record.request = f"{getattr(request, 'method', '')} {safe}"
        return True
