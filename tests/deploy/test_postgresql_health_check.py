"""The PostgreSQL backend's check of a reused connection at the start of each request
(config/postgresql): a server that ended the session is noticed before the request's
first query, and a healthy connection is not asked `SELECT 1`."""

from __future__ import annotations

import select
import time

import pytest
from django.db import close_old_connections, connection, connections

from hospital.models import Hospital
from tests.conftest import needs_postgresql

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgresql():
    needs_postgresql("the backend is PostgreSQL's")
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True


@pytest.fixture
def observer():
    """A second connection, as an administrator's psql would be."""
    other = connections.create_connection("default")
    yield other
    other.close()


def _run(conn, sql: str, params=()) -> list[tuple]:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _start_request() -> None:
    """What Django does between two requests (request_finished and request_started)."""
    close_old_connections()
    connection.cursor().close()  # the request's first cursor: the health check runs here


def _wait_until_readable(seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([connection.connection.fileno()], [], [], 0.05)[0]:
            return
    pytest.fail("the server sent nothing to the connection")


def test_a_healthy_connection_is_reused_without_asking_the_server(observer, hospital_a):
    close_old_connections()
    pid = _run(connection, "SELECT pg_backend_pid()")[0][0]
    assert Hospital.objects.filter(slug=hospital_a.slug).exists()

    _start_request()

    last_query = _run(observer, "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])[0][0]
    assert last_query.startswith('SELECT 1 AS "a" FROM "hospital_hospital"')
    assert _run(connection, "SELECT pg_backend_pid()")[0][0] == pid


def test_a_session_the_server_ended_is_replaced_before_the_request_uses_it(observer, hospital_a):
    close_old_connections()
    pid = _run(connection, "SELECT pg_backend_pid()")[0][0]
    assert _run(observer, "SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
    _wait_until_readable()

    _start_request()

    assert Hospital.objects.filter(slug=hospital_a.slug).exists()
    assert _run(connection, "SELECT pg_backend_pid()")[0][0] != pid


def test_a_connection_with_a_message_waiting_gets_the_full_check_and_is_kept(observer):
    close_old_connections()
    pid = _run(connection, "SELECT pg_backend_pid()")[0][0]
    with connection.cursor() as cursor:
        cursor.execute("LISTEN pleura_health_check")
    _run(observer, "SELECT pg_notify('pleura_health_check', 'hello')")
    _wait_until_readable()

    _start_request()

    assert _run(observer, "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]) == [("SELECT 1",)]
    assert _run(connection, "SELECT pg_backend_pid()")[0][0] == pid
