"""Celery tasks: thin wrappers around services. (The pipeline issue fills this in.)"""

from __future__ import annotations


def enqueue_prediction(study_id: int) -> None:
    """Hand a stored study to the inference queue. Called via transaction.on_commit.

    Must never raise: if the broker is down the study stays `queued` and the sweeper
    queues it later.
    """
