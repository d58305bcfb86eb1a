"""Request ids and JSON log lines: every line of a request carries its id, never PHI."""

from __future__ import annotations

import json
import logging
import re

import pytest

from diagnostics.observability import JsonFormatter, RequestIdFilter, request_id_var


def _format(record: logging.LogRecord) -> dict:
    RequestIdFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_every_response_carries_a_fresh_request_id(client):
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second


def test_request_id_from_the_proxy_is_kept(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="5f0c7a1e2b3d4c5e")
    assert response["X-Request-ID"] == "5f0c7a1e2b3d4c5e"


@pytest.mark.parametrize("sent", ["DOE^JANE 1970-01-01 MRN 12345", "5f0c7a1e2b3d4c5e\n"])
def test_malformed_request_id_is_replaced_so_clients_cannot_inject_log_text(client, sent):
    """A final line break passed a pattern ending in `$` (bad-input review)."""
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_request_line_is_logged_with_its_id_and_without_the_query_string(client, db, caplog):
    caplog.set_level(logging.DEBUG)
    response = client.get("/accounts/login/?q=DOE%5EJANE", HTTP_X_REQUEST_ID="req-0123456789")
    lines = [r for r in caplog.records if r.name == "pleura.request"]
    assert len(lines) == 1
    payload = _format_with_id(lines[0], "req-0123456789")
    assert payload["message"] == f"GET /accounts/login/ {response.status_code}"
    assert payload["http_path"] == "/accounts/login/"
    assert payload["http_status"] == response.status_code == 200
    assert payload["request_id"] == "req-0123456789"
    assert "DOE" not in caplog.text
    assert request_id_var.get() is None  # unbound once the response is out


def _format_with_id(record: logging.LogRecord, request_id: str) -> dict:
    token = request_id_var.set(request_id)
    try:
        return _format(record)
    finally:
        request_id_var.reset(token)


def test_json_formatter_writes_one_object_with_ids_extras_and_exception():
    try:
        raise ValueError("decoder said no")
    except ValueError as exc:
        record = logging.LogRecord("pleura.test", logging.ERROR, __file__, 1, "study %s failed", ("abc",), None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.study_code = "abc"
    payload = _format_with_id(record, "req-abcdef012345")
    assert payload["message"] == "study abc failed"
    assert payload["level"] == "ERROR"
    assert payload["logger"] == "pleura.test"
    assert payload["request_id"] == "req-abcdef012345"
    assert payload["task_id"] is None
    assert payload["study_code"] == "abc"
    assert payload["exception"].endswith("ValueError: decoder said no")
    assert payload["ts"].endswith("+00:00")


def test_json_formatter_redacts_extra_fields_that_name_a_patient():
    record = logging.LogRecord("pleura.test", logging.INFO, __file__, 1, "stored", (), None)
    record.patient_name = "DOE^JANE"
    record.PatientID = "MRN-12345"
    line = JsonFormatter().format(record)
    assert json.loads(line)["patient_name"] == "[redacted]"
    assert json.loads(line)["PatientID"] == "[redacted]"
    assert "DOE" not in line
    assert "MRN-12345" not in line


@pytest.mark.parametrize(
    "field",
    [
        "accession_number",
        "AccessionNumber",
        "birth_date",
        "PatientBirthDate",
        "dob",
        "mrn",
        "ssn",
        "ReferringPhysicianName",
    ],
)
def test_json_formatter_redacts_other_identifiers_of_a_patient(field):
    """The last net caught only names with "patient" in them (PHI review)."""
    record = logging.LogRecord("pleura.test", logging.INFO, __file__, 1, "stored", (), None)
    setattr(record, field, "ACC-PHI-5555")
    record.study_code = "abc"

    payload = json.loads(JsonFormatter().format(record))

    assert (payload[field], payload["study_code"]) == ("[redacted]", "abc")


class _IdCapture(logging.Handler):
    """Records as a real handler sees them: with the id bound at the moment of logging."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_djangos_own_error_lines_carry_the_request_id_and_its_4xx_lines_are_off(db, monkeypatch):
    """Django's "Not Found: <path>" repeated the raw path, whatever an EMR put in it
    (security review): its 4xx lines are off, pleura.request logs the path made safe, and
    its 5xx lines still come, with the request id."""
    from django.test import Client

    from diagnostics import health

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    client = Client(raise_request_exception=False)
    capture = _IdCapture()
    logging.getLogger().addHandler(capture)
    try:
        client.get("/no-such-page/", HTTP_X_REQUEST_ID="req-notfound-42")
        monkeypatch.setattr(health, "JsonResponse", broken)
        client.get("/healthz", HTTP_X_REQUEST_ID="req-broken-43")
    finally:
        logging.getLogger().removeHandler(capture)
    django_lines = [(r.getMessage(), r.request_id) for r in capture.records if r.name == "django.request"]
    assert django_lines == [("Internal Server Error: /healthz", "req-broken-43")]
    ours = [(r.getMessage(), r.request_id) for r in capture.records if r.name == "pleura.request"]
    assert ours[0] == ("GET (a path Pleura does not serve) 404", "req-notfound-42")
    assert request_id_var.get() is None
