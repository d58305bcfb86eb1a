"""gunicorn settings for the web process (deploy/entrypoint.sh web)."""

from __future__ import annotations

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Requests are short (uploads are streamed to disk, inference is in Celery), so sync
# workers with a few threads each; 2 x CPU + 1 processes is gunicorn's own advice.
workers = int(os.environ.get("GUNICORN_WORKERS", str(2 * (os.cpu_count() or 1) + 1)))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
# Recycle processes now and then so a slow leak cannot grow forever.
max_requests = 2000
max_requests_jitter = 200
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Django logs every request as JSON with its id (diagnostics.observability); gunicorn's
# access line would repeat it, and it would include query strings.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
control_socket_disable = True
# Heartbeat files: on a memory filesystem so a slow disk never looks like a hung worker
# (/tmp is a tmpfs in deploy/docker-compose.yml; the k8s web pod sets /dev/shm; None =
# the system's temporary folder).
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or None


def child_exit(server, worker) -> None:
    # Prometheus multiprocess mode: drop the live gauges of a worker that exited.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
