"""`retrain_model --queue` through a real `celery worker` of the `training` queue and the
real broker (Redis when REDIS_URL is set, as in CI), sharing the test database."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from mlcore.models import ModelVersion
from tests.mlcore.helpers import SMALL_DATA
from tests.pipeline import conftest as pipeline_fixtures
from tests.pipeline.conftest import wait_for

# The real broker and worker of the pipeline's tests, as fixtures of this module.
broker = pipeline_fixtures.broker
start_worker = pipeline_fixtures.start_worker

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_queued_retraining_runs_on_the_training_worker_which_serves_no_model(
    active_model, loop_settings, start_worker
):
    worker = start_worker(queues="training", MODEL_WEIGHTS_DIR=str(loop_settings), TRAINING_DATA_DIR=str(SMALL_DATA))
    out = io.StringIO()
    call_command("retrain_model", "--queue", "--name", "pleura-tiny-queued", "--epochs", "1", stdout=out)
    assert out.getvalue() == "queued retraining of pleura-tiny-queued on the training queue\n"

    wait_for(lambda: ModelVersion.objects.filter(name="pleura-tiny-queued").exists(), 300, what="the candidate")
    candidate = ModelVersion.objects.get(name="pleura-tiny-queued")
    assert (candidate.status, candidate.parent) == ("candidate", active_model)
    assert (loop_settings / "pleura-tiny-queued" / "weights.pt").is_file()
    # It never loaded the serving model: that is for the inference queue's workers.
    assert "inference worker ready" not in worker.log()
    assert "Task mlcore.retrain_model" in worker.log()
