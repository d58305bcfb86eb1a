"""mlcore's network side is plain Python: importing it loads no Django, no tenant app, no HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

PLAIN = ["network", "engine", "gradcam", "preprocessing", "calibration", "metrics", "evaluation", "data", "training"]
PLAIN += ["card", "plots"]


def test_the_plain_modules_import_without_django_or_a_tenant_app():
    probe = (
        "import json, sys\n"
        f"for name in {PLAIN!r}: __import__('mlcore.' + name)\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps(sorted(roots & {'django', 'rest_framework', 'hospital', 'diagnostics', 'accounts'})))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}  # no DJANGO_SETTINGS_MODULE
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
