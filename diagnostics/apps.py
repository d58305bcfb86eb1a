from __future__ import annotations

from django.apps import AppConfig


class DiagnosticsConfig(AppConfig):
    name = "diagnostics"
    verbose_name = "Studies and predictions"

    def ready(self) -> None:
        from diagnostics import checks  # noqa: F401 - registers the pipeline's settings checks
