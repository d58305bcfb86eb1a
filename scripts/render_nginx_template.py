"""Fill in deploy/nginx/pleura.conf.template's ${PLEURA_*} names, as the official nginx
image's envsubst does at start, and refuse to leave any unset.

    python scripts/render_nginx_template.py deploy/nginx/pleura.conf.template out.conf

reads the values from the environment (deploy/smoke.sh); tests call `render`.
"""

from __future__ import annotations

import os
import re
import string
import sys
from collections.abc import Mapping
from pathlib import Path


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every ${PLEURA_*} replaced; nginx's own $variables are left alone."""
    names = set(re.findall(r"\$\{(PLEURA_[A-Z_]+)\}", template))
    missing = sorted(name for name in names if name not in values)
    if missing:
        raise ValueError(f"template variables not set: {missing}")
    return string.Template(template).safe_substitute({name: values[name] for name in names})


def main() -> None:
    source, target = (Path(name) for name in sys.argv[1:3])
    try:
        rendered = render(source.read_text(), os.environ)
    except ValueError as exc:
        sys.exit(str(exc))
    target.write_text(rendered)


if __name__ == "__main__":
    main()
