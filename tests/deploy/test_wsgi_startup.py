"""The web application does its importing when a server process starts, not during a request."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

VIEW_MODULES = ["diagnostics.views", "diagnostics.api.views", "diagnostics.dicomweb", "accounts.views"]


def test_loading_the_wsgi_application_imports_every_view():
    # A fresh interpreter, as a gunicorn worker starts: what config.wsgi leaves unimported,
    # the first upload each process serves would import while the EMR waits.
    probe = f"import sys, config.wsgi; print(sorted(m for m in {VIEW_MODULES!r} if m not in sys.modules))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
