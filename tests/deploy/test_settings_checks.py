"""The pipeline's settings checks: the deployment's `migrate` step refuses a release that
fails one (`check --deploy --fail-level WARNING`)."""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import SystemCheckError


def test_a_stuck_time_no_longer_than_the_task_limit_is_refused(settings):
    settings.CELERY_TASK_TIME_LIMIT = 300
    settings.PIPELINE_STUCK_SECONDS = 300
    try:
        call_command("check")
    except SystemCheckError as refused:
        message = str(refused)
    else:
        message = ""
    assert "pleura.E001" in message
    assert "PIPELINE_STUCK_SECONDS (300) must be longer than CELERY_TASK_TIME_LIMIT (300)." in message


def test_the_shipped_settings_pass(settings):
    assert (settings.PIPELINE_STUCK_SECONDS, settings.CELERY_TASK_TIME_LIMIT) == (300, 180)
    call_command("check")
