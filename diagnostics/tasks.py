"""Celery tasks: thin wrappers around diagnostics.pipeline. They take ids and are idempotent."""

from __future__ import annotations

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_process_init
from django.conf import settings

from diagnostics import metrics, pipeline


def enqueue_prediction(study_id: int) -> None:
    """Hand a stored study to the inference queue. Called via transaction.on_commit.

    Never raises: if the broker is down the study stays `queued` and the sweeper
    queues it later.
    """
    pipeline.enqueue_prediction(study_id)


@shared_task(bind=True, name=pipeline.PREDICT_TASK, max_retries=pipeline.MAX_RETRIES)
def predict_studies(self, study_ids: list[int]) -> int:
    try:
        return len(pipeline.predict_studies(study_ids, claim=self.request.id or ""))
    except pipeline.TransientPipelineError as exc:
        metrics.record_retry(exc.reason, exhausted=self.request.retries >= self.max_retries)
        # Retry with the ids actually claimed: drained studies are not lost with the retry.
        raise self.retry(
            args=[exc.study_ids], exc=exc.__cause__ or exc, countdown=pipeline.retry_delay(self.request.retries)
        ) from exc


@shared_task(name="diagnostics.sweep_stuck_studies", soft_time_limit=50, time_limit=60)
def sweep_stuck_studies() -> dict:
    result = pipeline.sweep_stuck_studies()
    return {"requeued": len(result.requeued), "gave_up": len(result.gave_up)}


# Processes in this worker's pool (`--concurrency`), and whether it predicts at all (a
# worker of the `training` queue only does not), read in the parent before it forks.
_pool_processes = 1
_predicts = True


@celeryd_after_setup.connect
def _prepare_pool(instance, **kwargs) -> None:
    """In the worker's parent, before it forks the pool: note the pool's size, and import
    torch once, so that every pool process inherits it rather than importing it again
    (seconds each) after fork. Web processes never get here and never load torch."""
    global _pool_processes, _predicts  # set once in the parent, inherited by the forked pool
    _pool_processes = int(instance.concurrency or 1)
    predictions_queue = settings.CELERY_TASK_ROUTES[pipeline.PREDICT_TASK]["queue"]
    _predicts = predictions_queue in instance.app.amqp.queues.consume_from
    import mlcore.engine  # noqa: F401 - importing torch initialises no CUDA context


@worker_process_init.connect
def _load_model_after_fork(**kwargs) -> None:
    # CUDA contexts do not survive fork: each pool process loads its own model here.
    if _predicts:
        pipeline.warm_up(_pool_processes)
