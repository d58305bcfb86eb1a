"""Celery tasks of the learning loop: thin wrappers around diagnostics.feedback and mlcore.retraining."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.auth import get_user_model

from mlcore.models import ModelVersion

log = logging.getLogger(__name__)

RETRAIN_TASK = "mlcore.retrain_model"
# A fine-tune of ResNet-18 on the whole base set (about 4,400 images) takes minutes on a
# GPU; on 2 CPU cores an epoch at 160 px takes the default model's training time divided
# by its epochs (about 10-15 minutes), so 4 hours leave ample room for the default 3.
RETRAIN_SOFT_TIME_LIMIT = 4 * 3600
RETRAIN_TIME_LIMIT = RETRAIN_SOFT_TIME_LIMIT + 300


@shared_task(
    name=RETRAIN_TASK,
    soft_time_limit=RETRAIN_SOFT_TIME_LIMIT,
    time_limit=RETRAIN_TIME_LIMIT,
    # Acknowledged when a worker takes it, unlike predictions: a run lasts hours, longer
    # than Redis keeps an unacknowledged message before delivering it again (the visibility
    # timeout), so acks_late would start a second run beside the first. A run lost with a
    # killed worker is started again by hand (a new default name: it holds the time).
    acks_late=False,
)
def retrain_model(name: str, actor_id: int | None = None, **options) -> str | None:
    """Export the consented reviews and fine-tune the active model into candidate `name`.

    Idempotent: if `name` is already registered the task returns at once, and a second run
    for a name being trained stops before training (mlcore.retraining claims the name).
    """
    from diagnostics.feedback import retrain_from_reviews

    if ModelVersion.objects.filter(name=name).exists():
        return None
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    version = retrain_from_reviews(name=name, actor=actor, **options)
    log.info("retrained candidate %s", version.name)
    return version.name
