"""nginx's protected-media location for an S3-compatible bucket, run for real from both
configurations the project ships: deploy/nginx/pleura.conf.template (Compose, TLS) and the
Kubernetes web pod's sidecar, deploy/k8s/base/nginx.conf (the Ingress terminates TLS).
Django has authorized the request and handed nginx a signed URL (X-Accel-Redirect); an
object store that cannot be reached, or fails, is answered 503 with Retry-After (an outage,
which EMRs and the portal's viewer retry), not nginx's 502, and a missing object is nginx's
own 404, not the bucket's error document. Django here is a stand-in that only gives the
redirect (or says which caller nginx named); the bucket is a stand-in too, or a port nobody
listens on."""

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

from config.errors import STORAGE_RETRY_AFTER_SECONDS
from scripts.render_nginx_template import render
from tests.conftest import REPO_ROOT, missing

TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "pleura.conf.template"
K8S_SIDECAR = REPO_ROOT / "deploy" / "k8s" / "base" / "nginx.conf"
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
    """Django: /redirect/<target> answers with X-Accel-Redirect to <target>, /caller with
    the X-Real-IP it was sent. The bucket:
    /bucket/ok.png is an object, /bucket/failing.png answers 500, anything else 404."""

    def do_GET(self):
        if self.path == "/caller":  # Django's view of who called: the X-Real-IP nginx sent
            self._answer(200, (self.headers.get("X-Real-IP") or "").encode())
        elif self.path.startswith("/redirect/"):
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
def stand_in():
    """host:port of the stand-in for Django and the bucket."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


def _certificate(folder, name: str) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1: (certificate, key) paths. The
    address is a DNS name too: nginx matches the name it connects to against DNS names only."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture(scope="module")
def https_buckets(tools, tmp_path_factory):
    """Two HTTPS buckets: one whose certificate nginx is told to trust (in place of the
    system's CAs), one with a certificate nobody vouches for, as a man in the middle has."""
    folder = tmp_path_factory.mktemp("buckets")
    servers = {}
    for name in ("trusted", "impostor"):
        cert, key = _certificate(folder, name)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield SimpleNamespace(
        ca=str(folder / "trusted.crt"), **{name: f"127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    )
    for server in servers.values():
        server.shutdown()


def _compose_config(work, port: int, upstream: str) -> tuple[str, ssl.SSLContext]:
    """The template rendered as Compose and deploy/smoke.sh render it, inside a minimal
    nginx.conf; TLS with a throwaway certificate."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    values = {
        "PLEURA_SERVER_NAME": "localhost",
        "PLEURA_PUBLIC_ORIGIN": f"https://127.0.0.1:{port}",
        "PLEURA_HTTP_LISTEN": f"127.0.0.1:{_free_port()}",
        "PLEURA_HTTPS_LISTEN": f"127.0.0.1:{port}",
        "PLEURA_UPSTREAM": upstream,
        "PLEURA_TLS_CERT": str(work / "tls.crt"),
        "PLEURA_TLS_KEY": str(work / "tls.key"),
        "PLEURA_STATIC_ROOT": str(work / "static"),
        "PLEURA_MEDIA_ROOT": str(work / "media"),
        "PLEURA_MAX_BODY": "110m",
        "PLEURA_RESOLVER": "127.0.0.1",
        "PLEURA_ACCESS_LOG": str(work / "access.log"),
    }
    (work / "pleura.conf").write_text(render(TEMPLATE.read_text(), values))
    context = ssl.create_default_context(cafile=str(work / "tls.crt"))
    context.check_hostname = False
    return (
        f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    include /etc/nginx/mime.types;\n    client_body_temp_path {work}/body;\n"
        f"    proxy_temp_path {work}/proxy;\n    include {work}/pleura.conf;\n}}\n"
    ), context


def _k8s_sidecar_config(work, port: int, upstream: str) -> tuple[str, None]:
    """The sidecar's whole nginx.conf, with only what ties it to the pod replaced: its
    port, gunicorn's address, the cluster's resolver and its files under /tmp."""
    config = K8S_SIDECAR.read_text()
    for pod_value, here in (
        ("/tmp/", f"{work}/"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://{upstream};"),
        ("resolver kube-dns.kube-system.svc.cluster.local", "resolver 127.0.0.1"),
        ("access_log /dev/stdout", f"access_log {work}/access.log"),
    ):
        assert pod_value in config, f"{K8S_SIDECAR.name} no longer has {pod_value!r}"
        config = config.replace(pod_value, here)
    return config, None


# How each configuration is run, and the security headers its own server block sends.
CONFIGURATIONS = {
    "compose": (
        _compose_config,
        {
            "X-Content-Type-Options": "nosniff",
            "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
        },
    ),
    # HSTS comes from the Ingress, in front of the sidecar.
    "k8s-sidecar": (_k8s_sidecar_config, {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}),
}


@pytest.fixture(scope="module", params=sorted(CONFIGURATIONS))
def nginx(request, tools, stand_in, https_buckets, tmp_path_factory):
    """`nginx.get(path)` -> (status, headers, body) of a GET through one shipped
    configuration; `nginx.stand_in` is the host:port of the stand-in (Django and the bucket)."""
    configure, security_headers = CONFIGURATIONS[request.param]
    work = tmp_path_factory.mktemp(f"nginx-{request.param}")
    port = _free_port()
    config, tls = configure(work, port, stand_in)
    (work / "nginx.conf").write_text(config)
    # The only trusted CA here: the trusted bucket's own certificate.
    for conf in work.glob("*.conf"):
        shipped = conf.read_text()
        assert SYSTEM_CAS in shipped or conf.name != ("pleura.conf" if tls else "nginx.conf"), conf
        conf.write_text(shipped.replace(SYSTEM_CAS, https_buckets.ca))
    server, get = start_nginx(work, port, tls)
    yield SimpleNamespace(get=get, stand_in=stand_in, security_headers=security_headers)
    server.terminate()
    server.wait(10)


def start_nginx(work, port: int, tls: ssl.SSLContext | None):
    """nginx run on `work`/nginx.conf, once it answers: (process, get), where
    `get(path, headers)` -> (status, headers, body) of a GET through it."""
    server = subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"], stderr=subprocess.PIPE
    )

    def get(path: str, headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        if tls is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        else:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    deadline = time.monotonic() + 10
    while True:
        try:
            get("/redirect/_protected/s3/none")
            return server, get
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"nginx did not start: {server.stderr.read().decode()}")
            time.sleep(0.1)


def _signed(host: str, key: str, scheme: str = "http") -> str:
    return f"/redirect/_protected/s3/{scheme}/{host}/bucket/{key}?X-Amz-Signature=0123abcd"


def test_an_https_bucket_is_read_only_with_a_certificate_nginx_trusts(nginx, https_buckets):
    """Without proxy_ssl_verify nginx streamed whatever answered, radiographs included."""
    trusted = nginx.get(_signed(https_buckets.trusted, "ok.png", scheme="https"))
    impostor = nginx.get(_signed(https_buckets.impostor, "ok.png", scheme="https"))

    assert (trusted[0], trusted[2]) == (200, PNG)
    assert (impostor[0], impostor[1]["Retry-After"]) == (503, str(STORAGE_RETRY_AFTER_SECONDS))
    assert PNG not in impostor[2]


def test_an_object_is_streamed_from_the_bucket(nginx):
    status, headers, body = nginx.get(_signed(nginx.stand_in, "ok.png"))

    assert (status, body) == (200, PNG)
    assert (headers["X-Accel-Redirect"], headers["Retry-After"]) == (None, None)


def test_a_bucket_nobody_answers_is_503_with_the_security_headers(nginx):
    status, headers, body = nginx.get(_signed(f"127.0.0.1:{_free_port()}", "heatmap.png"))

    assert status == 503
    assert headers.get_all("Retry-After") == [str(STORAGE_RETRY_AFTER_SECONDS)]
    assert headers["Content-Type"] == "text/html"
    assert b"503 Service Temporarily Unavailable" in body
    assert {name: headers[name] for name in nginx.security_headers} == nginx.security_headers
    assert headers["X-Accel-Redirect"] is None


def test_a_failing_bucket_is_503_and_a_missing_object_is_nginxs_404(nginx):
    failing_status, failing_headers, _ = nginx.get(_signed(nginx.stand_in, "failing.png"))
    missing_status, missing_headers, missing_body = nginx.get(_signed(nginx.stand_in, "gone.png"))

    assert (failing_status, failing_headers["Retry-After"]) == (503, str(STORAGE_RETRY_AFTER_SECONDS))
    assert (missing_status, missing_headers["Content-Type"], missing_headers["Retry-After"]) == (404, "text/html", None)
    assert b"404 Not Found" in missing_body
    assert b"NoSuchKey" not in missing_body


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_readiness_and_metrics_are_nginxs_own_404_from_outside(nginx, path):
    """/readyz names what is broken inside (broker, weights); probes ask gunicorn directly."""
    status, _, body = nginx.get(path)
    assert (status, b"404 Not Found" in body, b"NoSuchKey" in body) == (404, True, False)


def test_the_caller_named_to_gunicorn_is_the_peer_not_a_header_the_caller_sent(nginx):
    """Passed on from anyone, X-Real-IP let a caller choose its address, a new one for
    each password guess; the peer here (127.0.0.1) is no proxy either configuration trusts."""
    status, _, body = nginx.get("/caller", {"X-Real-IP": "203.0.113.9"})

    assert (status, body) == (200, b"127.0.0.1")


def test_behind_the_ingress_the_sidecar_passes_on_the_caller_the_ingress_named(tools, stand_in, tmp_path):
    """The sidecar's peer is the Ingress controller, which names the caller: trusted here
    as the shipped ranges trust the cluster's private addresses."""
    port = _free_port()
    config, _ = _k8s_sidecar_config(tmp_path, port, stand_in)
    assert "set_real_ip_from 10.0.0.0/8;" in config
    (tmp_path / "nginx.conf").write_text(config.replace("set_real_ip_from 10.0.0.0/8;", "set_real_ip_from 127.0.0.1;"))
    server, get = start_nginx(tmp_path, port, None)
    try:
        status, _, body = get("/caller", {"X-Real-IP": "203.0.113.9"})
    finally:
        server.terminate()
        server.wait(10)

    assert (status, body) == (200, b"203.0.113.9")
