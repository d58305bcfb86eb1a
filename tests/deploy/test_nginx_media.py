"""nginx's protected-media location for an S3-compatible bucket, run for real from
deploy/nginx/pleura.conf.template: Django has authorized the request and handed nginx a
signed URL (X-Accel-Redirect); an object store that cannot be reached, or fails, is
answered 503 (an outage, which EMRs and the portal's viewer retry), not nginx's 502, and a
missing object is nginx's own 404, not the bucket's error document. Django here is a stand-in that only gives the
redirect; the bucket is a stand-in too, or a port nobody listens on."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from scripts.render_nginx_template import render
from tests.conftest import REPO_ROOT, missing

TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "pleura.conf.template"
PNG = b"\x89PNG\r\n\x1a\n a heatmap"


@pytest.fixture(scope="module")
def tools():
    absent = [tool for tool in ("nginx", "openssl") if shutil.which(tool) is None]
    if absent:
        missing(f"{absent} not installed (apt-get install nginx-light openssl)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _StandIn(BaseHTTPRequestHandler):
    """Django: /redirect/<target> answers with X-Accel-Redirect to <target>. The bucket:
    /bucket/ok.png is an object, /bucket/failing.png answers 500, anything else 404."""

    def do_GET(self):
        if self.path.startswith("/redirect/"):
            self.send_response(200)
            self.send_header("X-Accel-Redirect", self.path.removeprefix("/redirect"))
            self.send_header("Content-Type", "image/png")
            self.end_headers()
        elif self.path.startswith("/bucket/ok.png?"):
            self._answer(200, PNG)
        elif self.path.startswith("/bucket/failing.png?"):
            self._answer(500, b"<Error><Code>InternalError</Code></Error>")
        else:
            self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def nginx(tools, tmp_path_factory):
    """`nginx.get(path)` -> (status, headers, body) of a GET through the rendered template;
    `nginx.stand_in` is the host:port of the stand-in (Django and the bucket)."""
    work = tmp_path_factory.mktemp("nginx")
    stand_in = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    https_port = _free_port()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    values = {
        "PLEURA_SERVER_NAME": "localhost",
        "PLEURA_PUBLIC_ORIGIN": f"https://127.0.0.1:{https_port}",
        "PLEURA_HTTP_LISTEN": f"127.0.0.1:{_free_port()}",
        "PLEURA_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "PLEURA_UPSTREAM": f"127.0.0.1:{stand_in.server_address[1]}",
        "PLEURA_TLS_CERT": str(work / "tls.crt"),
        "PLEURA_TLS_KEY": str(work / "tls.key"),
        "PLEURA_STATIC_ROOT": str(work / "static"),
        "PLEURA_MEDIA_ROOT": str(work / "media"),
        "PLEURA_MAX_BODY": "110m",
        "PLEURA_RESOLVER": "127.0.0.1",
        "PLEURA_ACCESS_LOG": str(work / "access.log"),
    }
    (work / "pleura.conf").write_text(render(TEMPLATE.read_text(), values))
    (work / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    include /etc/nginx/mime.types;\n    client_body_temp_path {work}/body;\n"
        f"    proxy_temp_path {work}/proxy;\n    include {work}/pleura.conf;\n}}\n"
    )
    server = subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf")], stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(work / "tls.crt"))
    context.check_hostname = False

    def get(path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    deadline = time.monotonic() + 10
    while True:
        try:
            get("/redirect/_protected/s3/none")
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"nginx did not start: {server.stderr.read().decode()}")
            time.sleep(0.1)
    yield SimpleNamespace(get=get, stand_in=f"127.0.0.1:{stand_in.server_address[1]}")
    server.terminate()
    server.wait(10)
    stand_in.shutdown()


def _signed(host: str, key: str) -> str:
    return f"/redirect/_protected/s3/http/{host}/bucket/{key}?X-Amz-Signature=0123abcd"


def test_an_object_is_streamed_from_the_bucket(nginx):
    status, headers, body = nginx.get(_signed(nginx.stand_in, "ok.png"))

    assert (status, body) == (200, PNG)
    assert headers["X-Accel-Redirect"] is None


def test_a_bucket_nobody_answers_is_503_with_the_security_headers(nginx):
    status, headers, body = nginx.get(_signed(f"127.0.0.1:{_free_port()}", "heatmap.png"))

    assert status == 503
    assert headers["Content-Type"] == "text/html"
    assert b"503 Service Temporarily Unavailable" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Accel-Redirect"] is None


def test_a_failing_bucket_is_503_and_a_missing_object_is_nginxs_404(nginx):
    failing_status, _, _ = nginx.get(_signed(nginx.stand_in, "failing.png"))
    missing_status, missing_headers, missing_body = nginx.get(_signed(nginx.stand_in, "gone.png"))

    assert failing_status == 503
    assert (missing_status, missing_headers["Content-Type"]) == (404, "text/html")
    assert b"404 Not Found" in missing_body
    assert b"NoSuchKey" not in missing_body
