"""Structured logs that can be followed across web and worker processes, without PHI.

- `RequestIdMiddleware` gives every request an id (the proxy's `X-Request-ID` when it
  is well formed, a new one otherwise), returns it in the response header and logs one
  line per request: method, path, status, duration. Never the query string (a
  worklist search may hold a patient name) and never a body.
- `RequestIdFilter` puts the current request id (and the Celery task id/name inside a
  worker) on every log record; the id travels with the Celery messages a request queues.
- `JsonFormatter` writes one JSON object per line, for log shippers.

PHI is kept out by construction: code logs codes (UUIDs), counts and reasons, never
patient fields. As a last net, extra fields whose name mentions a patient are redacted.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable

from celery import signals
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from config.safe_paths import loggable_path

REQUEST_ID_HEADER = "X-Request-ID"
# Ids from the proxy are trusted only in this shape, so a client cannot inject text
# (or PHI) into every log line of its request.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
# Extras whose name says they may hold a patient identifier: redacted whoever logs them.
_PHI_FIELD = re.compile(r"patient|accession|birth|dob|mrn|ssn|physician", re.IGNORECASE)

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

request_logger = logging.getLogger("pleura.request")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "task_id",
    "task_name",
    "request",  # Django's django.request records carry the HttpRequest itself.
    "server_time",
    "status_code",
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def _incoming_request_id(request: HttpRequest) -> str:
    candidate = request.headers.get(REQUEST_ID_HEADER, "")
    return candidate if _VALID_REQUEST_ID.fullmatch(candidate) else new_request_id()


class RequestIdMiddleware:
    """Binds a request id for the duration of the request and logs the request's outcome."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = _incoming_request_id(request)
        request.request_id = request_id
        # Unbound by `_unbind_request_id` when the response is closed, not here: Django
        # logs 4xx/5xx responses (django.request) after the middleware chain returns.
        request_id_var.set(request_id)
        started = time.perf_counter()
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        _log_request(request, response.status_code, started)
        return response


@receiver(request_finished)
def _unbind_request_id(**kwargs) -> None:
    request_id_var.set(None)


def _log_request(request: HttpRequest, status: int, started: float) -> None:
    if request.path in ("/healthz", "/readyz", "/metrics"):
        return  # probes and scrapes every few seconds would drown the useful lines
    level = logging.WARNING if status >= 500 else logging.INFO
    path = loggable_path(request)
    request_logger.log(
        level,
        "%s %s %s",
        request.method,
        path,
        status,
        extra={
            "http_method": request.method,
            "http_path": path,
            "http_status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )


class RequestIdFilter(logging.Filter):
    """Adds `request_id`, `task_id` and `task_name` to every record (None when absent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.task_id, record.task_name = _current_task()
        return True


def _current_task() -> tuple[str | None, str | None]:
    from celery import current_task

    task = current_task
    if not task or task.request is None or task.request.id is None:
        return None, None
    return task.request.id, task.name


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "task_id": getattr(record, "task_id", None),
            "task_name": getattr(record, "task_name", None),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in payload:
                payload[key] = "[redacted]" if _PHI_FIELD.search(key) else value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


@signals.before_task_publish.connect
def _attach_request_id(headers: dict | None = None, **kwargs) -> None:
    """A task queued during a request carries its id, so worker lines join the request's."""
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault("request_id", request_id)


@signals.task_prerun.connect
def _bind_task_request_id(task=None, **kwargs) -> None:
    request_id = getattr(task.request, "request_id", None) if task is not None else None
    request_id_var.set(request_id if isinstance(request_id, str) and _VALID_REQUEST_ID.fullmatch(request_id) else None)


@signals.task_postrun.connect
def _unbind_task_request_id(**kwargs) -> None:
    request_id_var.set(None)


@signals.worker_ready.connect
def _serve_worker_metrics(**kwargs) -> None:
    """Celery workers have no HTTP server: expose this machine's multiprocess metrics.

    Started in the worker's main process, so the endpoint lives exactly as long as the
    worker does and Prometheus' `up` for the worker job doubles as worker liveness.
    Enabled by WORKER_METRICS_PORT (deploy/ sets it; unset in development and tests).
    """
    port = os.environ.get("WORKER_METRICS_PORT")
    if not port or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(int(port), addr=os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0"), registry=registry)  # noqa: S104
    logging.getLogger(__name__).info("worker metrics served on port %s", port)
