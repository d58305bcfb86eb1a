#!/usr/bin/env python
"""Django's command-line utility for Pleura."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - reads the settings, where the environment is judged
    except ImproperlyConfigured as exc:
        # The settings' own words say what to set; a traceback around them reads as a crash
        # to the person installing Pleura (config/settings/env.py).
        sys.exit(f"Pleura's settings refused the environment: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
