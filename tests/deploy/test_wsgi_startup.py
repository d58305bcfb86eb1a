"""The web application does its importing when a server process starts, not during a request."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

VIEW_MODULES = ["diagnostics.views", "diagnostics.api.views", "diagnostics.dicomweb", "accounts.views"]


def _after_loading_the_wsgi_application(expression: str) -> str:
    """Evaluate `expression` in a fresh interpreter that has loaded config.wsgi, as a gunicorn process starts."""
    probe = f"import sys, config.wsgi; print({expression})"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_loading_the_wsgi_application_imports_every_view():
    # What config.wsgi leaves unimported, the first upload each process serves would
    # import while the EMR waits.
    missing = _after_loading_the_wsgi_application(f"sorted(m for m in {VIEW_MODULES!r} if m not in sys.modules)")
    assert missing == "[]"


def test_web_processes_do_not_load_torch():
    # Only workers run the network; torch would cost every gunicorn process about 4 s
    # to start and some 600 MiB of memory.
    assert _after_loading_the_wsgi_application("'torch' in sys.modules") == "False"
