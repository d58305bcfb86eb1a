"""System checks of the pipeline's settings (run by `manage.py check`, and by the
deployment's `migrate` step, which refuses a release on any of them)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def stuck_time_outlasts_the_task(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """The sweeper takes a `processing` study for one whose worker died once it has been
    processing PIPELINE_STUCK_SECONDS: a worker still on it then (its task allowed longer
    by CELERY_TASK_TIME_LIMIT) would store its result beside the one a second worker makes."""
    stuck, limit = settings.PIPELINE_STUCK_SECONDS, settings.CELERY_TASK_TIME_LIMIT
    if stuck > limit:
        return []
    return [
        checks.Error(
            f"PIPELINE_STUCK_SECONDS ({stuck}) must be longer than CELERY_TASK_TIME_LIMIT ({limit}).",
            hint="A study still processing past the stuck time would be taken by a second worker while "
            "its first may still store a result. Raise PIPELINE_STUCK_SECONDS or lower the time limit.",
            id="pleura.E001",
        )
    ]
