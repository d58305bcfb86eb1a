"""The Celery application. Tasks live in each app's tasks.py and are found by autodiscovery.

Settings come from Django (`CELERY_*` in config/settings/base.py): Redis in production
(`REDIS_URL`), and by default a `filesystem://` broker under var/broker that needs no
server and works across the processes of one machine (`make run`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from billiard.compat import mem_rss as peak_resident_kib
from billiard.pool import EX_RECYCLE
from celery import Celery
from celery.signals import worker_process_shutdown

# Production unless told otherwise: this module runs first whenever anything under config/
# is imported (config/__init__.py), config.wsgi and config.asgi included, so a default of
# its own wins over theirs. Defaulting to local here, gunicorn's `config.wsgi` started
# with DEBUG on and the public development key (fresh-machine review). manage.py and
# `make run` choose local for themselves.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

logger = logging.getLogger(__name__)

app = Celery("pleura")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _create_filesystem_broker_folders(sender: Celery, **kwargs) -> None:
    # The filesystem transport fails on the first message if its folders do not exist.
    if not str(sender.conf.broker_url or "").startswith("filesystem://"):
        return
    options = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)


@worker_process_shutdown.connect
def _say_why_a_pool_process_was_replaced(pid: int | None = None, exitcode: int | None = None, **kwargs) -> None:
    # billiard's own line about it goes to a logger that Django's logging never sets up.
    if exitcode == EX_RECYCLE and app.conf.worker_max_memory_per_child:
        logger.warning(
            "pool process %s replaced: its peak resident memory (%d MiB) outgrew "
            "CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB (%d)",
            pid or os.getpid(),
            peak_resident_kib() // 1024,
            app.conf.worker_max_memory_per_child // 1024,
        )


@worker_process_shutdown.connect
def _forget_dead_process_metrics(pid: int | None = None, **kwargs) -> None:
    # Prometheus multiprocess mode: live gauges of an exited pool process must not linger.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
