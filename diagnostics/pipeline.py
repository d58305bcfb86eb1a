"""The prediction pipeline: queue a stored study, predict it in a batch, store and audit.

The database is the source of truth. A study moves queued -> processing -> completed or
failed, always by a conditional update, so a second delivery of a message, a worker
that loses a race, or a sweeper that re-queued a slow study never does the work twice.
Celery messages only say "look at these ids"; losing one costs a sweep, never a study.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, Q, QuerySet, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from config.celery import app as celery_app
from config.fail_fast import FailFast
from diagnostics import media, metrics
from diagnostics.models import Prediction, Study
from hospital import audit
from mlcore import registry
from mlcore.models import ModelVersion

log = logging.getLogger(__name__)

# Most studies one worker predicts in one forward pass. Grad-CAM no longer runs a backward
# pass, so the activations it kept no longer push large batches out of cache: on this
# 2-core VM (Intel Xeon host, ResNet-18 at 128 px, heatmap PNGs included, one thread),
# `python -m bench.inference --threads 1 --batch-sizes 16 8 32 --repeats 32`, twice,
# sustained 48.1 and 48.3 images/s at batch 8, 52.9 and 58.1 at 16, 53.7 and 53.5 at 32.
# A batch of 16 also halves the per-batch database work for each study; 32 gains nothing
# more and doubles the wait of a study that arrives just after a batch began. A GPU worker
# gains from more (PIPELINE_MAX_BATCH=32 or 64).
MAX_BATCH = settings.PIPELINE_MAX_BATCH
PREDICT_TASK = "diagnostics.predict_studies"
# Retries of one message on a transient error, with exponential backoff capped at 60 s.
MAX_RETRIES = 5
RETRY_BACKOFF_MAX_SECONDS = 60

STATUS = Study.Status
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerError, SoftTimeLimitExceeded)

UNDECODABLE_MESSAGE = "The image's pixel data could not be decoded, so no prediction was made. Please upload it again."
MISSING_FILE_MESSAGE = "The stored image file is missing, so no prediction was made. Please upload the image again."
INFERENCE_ERROR_MESSAGE = "The model could not analyse this image. Please upload it again or contact an administrator."
# The page offers "Analyse again" right below it: "upload it again" made a second study of
# the same image (portal review).
GAVE_UP_MESSAGE = (
    "This study could not be processed after {attempts} attempts. Analyse it again from its page, or send the "
    "image again; if this keeps happening, contact your Pleura administrator."
)


class TransientPipelineError(Exception):
    """Worth retrying later (database, broker, model not loadable). Carries the ids to
    retry, and what put them back as one of metrics.RETRY_REASONS."""

    def __init__(self, study_ids: list[int], cause: BaseException):
        # An unexpected error is named by the type it stands for (UnexpectedPipelineError).
        self._cause_name = str(cause) if isinstance(cause, UnexpectedPipelineError) else type(cause).__name__
        super().__init__(f"{len(study_ids)} studies postponed: {self._cause_name}")
        self.study_ids = study_ids
        self.reason = _retry_reason(cause)

    def __reduce__(self):
        # Celery pickles the exception of a retry that ran out: without this it logged an
        # UnpickleableExceptionWrapper in its place (diff review).
        return _postponed, (self.study_ids, self.reason, self._cause_name)


def _postponed(study_ids: list[int], reason: str, cause_name: str) -> TransientPipelineError:
    error = TransientPipelineError(study_ids, UnexpectedPipelineError(cause_name))
    error.reason = reason
    return error


class UnexpectedPipelineError(Exception):
    """An error of no known kind in a batch, named by its type only: its own words may quote
    a row's values (a database's DETAIL), and Celery logs what a task raises."""


def _retry_reason(cause: BaseException) -> str:
    for kind, reason in (
        (SoftTimeLimitExceeded, "time_limit"),
        (OutOfMemory, "out_of_memory"),
        (ModelUnavailable, "model_unavailable"),
        (StorageUnreachable, "storage"),
        (BrokerError, "broker"),
    ):
        if isinstance(cause, kind):
            return reason
    return "database" if isinstance(cause, TRANSIENT_ERRORS) else "unexpected_error"


class PermanentStudyError(Exception):
    """This study cannot be predicted, ever: recorded on the row and not retried."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelUnavailable(Exception):
    pass


class StorageUnreachable(Exception):
    """The file storage failed a read or a write (a disk error, S3 down): the batch is
    put back for a retry. Its studies' files are not at fault, so none of them fails."""


class OutOfMemory(Exception):
    """The model ran out of memory even on one image (a GPU shared with other work)."""


class UnreadableFile(StorageUnreachable):
    """This file could not be read, not the storage: the storage refused this one object
    (a permission), or a restarted study's file, read alone, failed again. It counts an
    attempt, or a study alone with it would go back uncounted for ever."""


# Errors after which the batches held go back counting an attempt, so each is then
# predicted alone and, should one of them be the cause, fails after PIPELINE_MAX_ATTEMPTS:
# retried as they were, a decoder that hangs past the soft time limit on one file took
# the same batch down on every retry, and the others with it.
RESTARTING_ERRORS = (SoftTimeLimitExceeded, OutOfMemory, UnreadableFile)


def retry_delay(retries: int) -> float:
    """Exponential backoff with jitter: 1, 2, 4, ... seconds, capped."""
    return min(RETRY_BACKOFF_MAX_SECONDS, 2**retries) * random.uniform(0.5, 1.0)


# --- Queueing -------------------------------------------------------------------------


def enqueue_prediction(study_id: int) -> bool:
    """Hand a newly stored study to the inference queue. Never raises.

    Called through `transaction.on_commit` by the ingestion service. If the broker is
    unreachable the study simply stays `queued` and the sweeper queues it later.
    """
    return wake_a_worker([study_id])


class _WakeUps:
    """At most one message waiting in the inference queue for the studies stored meanwhile.

    A message only tells a worker to look: whichever message it takes, a worker claims
    the oldest waiting studies and drains the queue. So while a message is waiting, a
    newly stored study needs none of its own: that message's claim will find it. Without
    this, every upload sent a message, and a worker draining a backlog met almost every
    one after its study was done, then went through them one by one: about 2.3 ms of
    broker and Celery work each, 0.6 s for a backlog of 256 (bench/pipeline.py), time
    its model did not get.

    The record is a key in the cache shared by the web and worker processes (Redis,
    PIPELINE_COALESCE_WAKE_UPS): added by whoever sends a message, if absent; deleted by
    a worker when it takes any message, before it claims. A study stored before that
    deletion is seen by the claim that follows it; one stored after finds no key and
    sends a message. The key expires after `seconds`, so a message lost with a broker
    restart holds back new messages for that long at most; its studies wait for the next
    message or, at worst, the sweeper, as they did before.

    One waiting message wakes one worker. So that a burst still reaches every idle worker
    and pool process (four share a GPU in deploy/), a drain whose first batch comes out
    full makes sure a message waits for the next one; that message also takes over what
    a drain stopped at its deadline leaves.
    """

    key = "pipeline:wake-up-waiting"

    def __init__(self, seconds: int = 30):
        self.seconds = seconds

    @property
    def enabled(self) -> bool:
        return settings.PIPELINE_COALESCE_WAKE_UPS

    def needed(self) -> bool:
        """Record that a message is about to be sent, unless one is waiting already."""
        if not self.enabled:
            return True
        try:
            return cache.add(self.key, 1, timeout=self.seconds)
        except Exception:  # cache unreachable: send one, as every upload did before
            log.warning("wake-up record unreachable; sending a message for this study")
            return True

    def forget(self) -> None:
        """No message is known to wait: the next stored study sends one."""
        if not self.enabled:
            return
        try:
            cache.delete(self.key)
        except Exception:  # the key expires on its own
            log.warning("wake-up record unreachable; it expires within %d s", self.seconds)


wake_ups = _WakeUps()


def wake_a_worker(study_ids: list[int]) -> bool:
    """Send a message for these studies unless one already waiting will claim them."""
    if not wake_ups.needed():
        return True
    if publish(study_ids):
        return True
    wake_ups.forget()  # nothing was sent: the next upload must try again
    return False


# The broker, skipped for a few seconds after it failed to answer (config.fail_fast).
broker_unanswered = FailFast()


def publish(study_ids: list[int]) -> bool:
    if broker_unanswered.skipping():
        log.warning("broker unreachable a moment ago, %d studies stay queued for the sweeper", len(study_ids))
        return False
    try:
        # retry=False: an upload must not hang on a dead broker.
        celery_app.send_task(PREDICT_TASK, args=[list(study_ids)], retry=False)
    except Exception as exc:  # whatever the broker raises, the sweeper recovers the study
        broker_unanswered.failed()
        log.warning("broker unreachable, %d studies stay queued for the sweeper: %s", len(study_ids), exc)
        return False
    return True


# --- The batch ------------------------------------------------------------------------


class _RecentlyFinished:
    """Ids of the studies this process completed in the last minute (at most `size`).

    Without a shared cache to coalesce wake-ups (`_WakeUps`), every upload sends its own
    message, but a busy worker drains the queue in batches, so most messages arrive
    after their study is done. Studies never leave `completed`, so a message whose
    studies this process just completed has nothing left to do: it is dropped without a
    round trip to the database. A redelivered message goes to a new process, which has
    no record and claims as usual. The record forgets after a minute, so even a database
    restored from a backup, which hands out old ids again, costs at most that minute's
    redundant messages, never a study: the sweeper's re-queue comes later than that.
    """

    def __init__(self, size: int = 4096, seconds: float = 60.0, clock=time.monotonic):
        self._finished_at: OrderedDict[int, float] = OrderedDict()
        self._size = size
        self._seconds = seconds
        self.clock = clock

    def add(self, study_ids: list[int]) -> None:
        now = self.clock()
        for study_id in study_ids:
            self._finished_at[study_id] = now
            self._finished_at.move_to_end(study_id)
        while len(self._finished_at) > self._size:
            self._finished_at.popitem(last=False)

    def include_all(self, study_ids: list[int]) -> bool:
        since = self.clock() - self._seconds
        return bool(study_ids) and all(self._finished_at.get(study_id, since) > since for study_id in study_ids)

    def clear(self) -> None:
        self._finished_at.clear()


finished_here = _RecentlyFinished()


def predict_studies(study_ids: list[int], claim: str = "") -> list[int]:
    """Claim these studies (and others waiting, up to MAX_BATCH), predict, store; while
    more keep coming, go on with them for up to PIPELINE_DRAIN_SECONDS.

    Draining in the same task spares each batch a round trip through the broker, so a
    busy worker goes from one batch straight to the next. The model runs in a thread of
    its own (`model_runner`): while it predicts a batch, this thread claims, reads and
    decodes the next one, then stores the batch's results while the next is predicted,
    so the model does not wait for the database and the storage between batches.

    `claim` identifies the message (the Celery task id): a redelivery of the same
    message, after its worker died, takes over the studies that worker had claimed.
    Returns the ids completed by this call. Raises TransientPipelineError after putting
    the batches it held back in the queue.
    """
    requested = list(dict.fromkeys(int(pk) for pk in study_ids))
    if wake_ups.enabled:
        # Before claiming: a study stored from now on sends a message of its own, and one
        # stored before is claimed below. This message may stand for studies other than
        # its own, so it always claims.
        wake_ups.forget()
    elif finished_here.include_all(requested):
        return []
    deadline = time.monotonic() + settings.PIPELINE_DRAIN_SECONDS
    done: list[int] = []
    held: list[_Batch] = []  # claimed and not yet stored: at most the one predicted and the next
    try:
        batch = _begin(requested, claim, held, in_model=set())
        first = True
        while batch is not None:
            if first and batch.claim_size >= MAX_BATCH and wake_ups.enabled:
                # A backlog: make sure a message waits for another idle worker or pool
                # process, which does the same on its first full batch, so a burst reaches
                # them all. A drain stopped at its deadline leaves no study uncovered: one
                # stored after this drain began sent a message, and more than a batch
                # waiting when it began made this first batch full.
                wake_a_worker([])
            # Past the deadline, the next message (or another worker) takes over.
            in_time = time.monotonic() < deadline
            # Nothing is claimed beside a restarted study, nor ahead of one put back
            # (see _alone_after_a_restart): it is taken once this batch is done.
            alone_next = batch.restarted or bool(batch.released)
            ahead = _begin([], claim, held, in_model=batch.computing) if in_time and not alone_next else None
            completed = _finish(batch)
            held.remove(batch)
            finished_here.add(completed)
            done += completed
            if alone_next and in_time:
                ahead = _begin([], claim, held, in_model=set())  # holding nothing
            batch, first = ahead, False
    except (*TRANSIENT_ERRORS, ModelUnavailable, StorageUnreachable, OutOfMemory) as exc:
        raise _put_back(held, requested, exc, restarted=isinstance(exc, RESTARTING_ERRORS)) from exc
    except Exception as exc:
        # An error of no known kind (a row the database refuses, a defect). Where it is
        # logged: its frames, not its words, which may quote a row's values.
        unexpected = UnexpectedPipelineError(type(exc).__name__)
        alone = any(batch.restarted for batch in held)
        where = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "an unexpected %s in %s of studies %s (ids), at:\n%s", type(exc).__name__,
            "a study taken alone after a restart" if alone else "a batch", _claimed_by(held) or requested, where,
        )  # fmt: skip
        if alone:
            # It met it again: it stays `processing`, and the sweeper, after
            # PIPELINE_STUCK_SECONDS, is its backoff (counted there, as sent again or given
            # up). Put back at once, a defect every study meets failed them all within
            # seconds, each failure sending the next study alone (diff review).
            raise unexpected from None
        # A batch: its studies go back as restarted, so each is next taken alone and one
        # study's fault stays its own. Left `processing` under an acknowledged message,
        # two batches waited for the sweeper and each study spent an attempt on another's
        # fault, with nothing counted (reliability review).
        raise _put_back(held, requested, unexpected, restarted=True) from None
    return done


def _put_back(held: list[_Batch], requested: list[int], cause: Exception, *, restarted: bool):
    """Put the batches held back in the queue; the error that retries their message with
    the ids they held (or those it asked for, if it held none)."""
    postponed = _claimed_by(held)
    for batch in held:
        _release(batch.claimed, batch.owner, restarted=restarted)
    return TransientPipelineError(postponed or requested, cause)


@dataclass(eq=False)
class _Batch:
    """One claimed batch, from its claim until its results are stored."""

    claimed: list[int]
    # Who claimed it (`Study.claimed_by`): every change the batch makes to its studies
    # requires them still to be claimed by it.
    owner: str = ""
    # How many the claim took, before any went back (a restarted study is predicted
    # alone): a full claim means a backlog, whatever this batch keeps of it.
    claim_size: int = 0
    version: ModelVersion | None = None
    reused: list[_Result] = field(default_factory=list)
    duplicates: list[Study] = field(default_factory=list)  # their pixels are being computed
    ready: list[Study] = field(default_factory=list)  # decoded, in the model
    grays: list[np.ndarray] = field(default_factory=list)
    predicted: Future | None = None
    shadow: ModelVersion | None = None  # the candidate predicting beside the active version
    shadowed: Future | None = None
    restarted: bool = False  # one study alone, whose processing was cut short before
    released: list[int] = field(default_factory=list)  # claimed, then put back in the queue

    @property
    def computing(self) -> set[tuple[int, str]]:
        """(hospital id, pixel sha256) of the studies this batch predicts."""
        return {(study.hospital_id, study.pixel_sha256) for study in self.ready if study.pixel_sha256}


class _ThreadsOfThisProcess:
    """A thread pool made by the process that uses it, so that a forked Celery pool
    process, which inherits none of its parent's threads, makes its own."""

    def __init__(self, name: str):
        self._name = name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._key: tuple[int, int] | None = None

    def pool(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._key != (os.getpid(), threads):
                if self._pool is not None and self._key[0] == os.getpid():
                    self._pool.shutdown(wait=False)  # the size changed (a test's settings)
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=self._name)
                self._key = (os.getpid(), threads)
            return self._pool

    def abandon(self) -> None:
        """Leave the pool to its threads and make a new one next time: a thread hung on a
        read (a stalled mount) never comes back, and each such hang left the process one
        storage thread fewer for good (pipeline review). The hung thread stays; the pool
        is whole again."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._key = None, None


class _ModelRunner:
    """The thread that runs this process's models, one call after another.

    The worker's own thread does the database and storage work of each batch. Done in
    turn with the model, it kept the model waiting 1.33 to 1.44 ms a study on one core
    of the 2-core VM, a sixth of the worker's time; overlapped, 0.2 ms remain and the
    worker predicts about 10% more studies a second (docs/benchmarks.md, twelfth
    stop). A GPU spends only 1.7 to 2.3 ms a study in the model, so there the database
    work weighs more. One thread, so that two passes never share an engine; nothing in
    it touches the database. Made by the process that uses it, so each forked pool
    process gets its own; warm_up runs in it too, since CUDA keeps its library handles
    per thread.
    """

    def __init__(self):
        self._threads = _ThreadsOfThisProcess("pleura-model")

    def submit(self, function, *args) -> Future:
        return self._threads.pool(1).submit(function, *args)


model_runner = _ModelRunner()


def _claimed_by(batches: list[_Batch]) -> list[int]:
    return [pk for batch in batches for pk in batch.claimed]


def _begin(requested: list[int], claim: str, held: list[_Batch], in_model: set) -> _Batch | None:
    """Claim a batch, read and decode it, and hand it to the model; None if none waits.

    `in_model` are the pixels of the batch in the model now: a study of the same pixels
    waits for that result, as a twin in its own batch does, rather than being computed
    again.
    """
    holding_others = bool(held)
    # Each batch's owner is its own: the message's id, then a part of its own. A message
    # Celery delivers again while its first run is alive (a broker connection lost) runs
    # twice at once; under one owner each run's changes passed for the other's, and the
    # first stored a result of the version it had claimed under over the second's claim
    # (worker review). Direct calls (no message) get an owner of their own too.
    owner = f"{claim}{MESSAGE_SEPARATOR}{uuid.uuid4().hex[:12]}" if claim else f"direct-{uuid.uuid4().hex}"
    claimed = _claim(requested, owner, holding=_claimed_by(held))
    if not claimed:
        return None
    batch = _Batch(claimed=claimed, owner=owner, claim_size=len(claimed))
    held.append(batch)
    studies = list(
        Study.objects.filter(pk__in=batch.claimed, status=STATUS.PROCESSING)
        .select_related("hospital")
        .order_by(F("queued_at").asc(nulls_first=True), "pk")
    )
    studies = _alone_after_a_restart(studies, batch, holding_others)
    batch.version, engine, shadow = _serving_engine()
    earlier = _reusable_predictions(studies, batch.version)
    to_compute: list[Study] = []
    seen = set(in_model)
    reusing: list[tuple[Study, Prediction]] = []
    for study in studies:
        key = (study.hospital_id, study.pixel_sha256)
        if study.pixel_sha256 and key in earlier:
            reusing.append((study, earlier[key]))
        elif study.pixel_sha256 and key in seen:
            batch.duplicates.append(study)  # same pixels already being computed: computed once
        else:
            seen.add(key)
            to_compute.append(study)
    batch.reused, not_reused = _reuse_all(reusing)
    to_compute += not_reused
    batch.ready, batch.grays, unreadable = _decode_all(to_compute)
    if unreadable:
        # Each is tried again alone once this batch is done, counting an attempt, so a
        # file that stays unreadable fails after PIPELINE_MAX_ATTEMPTS instead of holding
        # back every batch it lands in through all their retries.
        put_back = [study.pk for study in unreadable]
        _release_to_any_worker(put_back, batch.owner, restarted=True)
        batch.released += put_back
        batch.claimed = [pk for pk in batch.claimed if pk not in put_back]
    if batch.grays:
        batch.predicted = model_runner.submit(_run_model, engine, batch.grays)
        batch.shadow, batch.shadowed = shadow, _submit_shadow(shadow, batch.grays)
    return batch


def _alone_after_a_restart(studies: list[Study], batch: _Batch, holding_others: bool) -> list[Study]:
    """A study whose processing was cut short before (its worker died, or the sweeper
    found it stuck) may be what cut it short: a decoder that crashes or hangs on its
    file, a batch that runs out of memory or time. Taken with others again, it would take
    them down with it on every redelivery, for ever, and they would use up their
    attempts with it. So it is predicted alone, while the drain holds no other batch:
    claimed beside one, it goes back to the queue and is taken once that batch is done;
    studies claimed with it go back too. Once it has been restarted more than
    PIPELINE_MAX_ATTEMPTS times, it fails with a reason.
    """
    restarted_studies = [study for study in studies if study.attempts > 0]
    if not restarted_studies:
        return studies
    if holding_others:
        batch.released = [study.pk for study in restarted_studies]
        _release_to_any_worker(batch.released, batch.owner)
        kept = [study for study in studies if study.attempts == 0]
        batch.claimed = [study.pk for study in kept]
        return kept
    restarted = restarted_studies[0]
    batch.restarted = True
    gave_up = restarted.attempts > settings.PIPELINE_MAX_ATTEMPTS
    if gave_up:
        _give_up(restarted, from_status=STATUS.PROCESSING)
    batch.released = [study.pk for study in studies if study is not restarted]
    if batch.released:
        _release_to_any_worker(batch.released, batch.owner)
        batch.claimed = [restarted.pk]
    return [] if gave_up else [restarted]


def _release_to_any_worker(study_ids: list[int], owner: str, *, restarted: bool = False) -> None:
    """Put studies back in the queue with a message of their own, so an idle worker or pool
    process takes them now: left for this drain to take once its restarted study was done,
    they waited as long as that study hung (a read of a stalled mount: four soft time
    limits, with a pool process idle beside it; pipeline review)."""
    _release(study_ids, owner, restarted=restarted)
    publish(study_ids)


def _finish(batch: _Batch) -> list[int]:
    """Wait for the batch's predictions, store them and its reused results; return the ids completed."""
    results = list(batch.reused)
    predicted = batch.predicted.result() if batch.predicted else []
    for study, result in zip(batch.ready, predicted, strict=True):
        if isinstance(result, Exception):
            _fail(study, metrics.REASON_INFERENCE_ERROR, INFERENCE_ERROR_MESSAGE)
        else:
            results.append(_computed(study, batch.version, result))
    done = _store_all(results)
    done += _store_duplicates(batch.duplicates, batch.version)
    _store_shadow(batch, completed=set(done))
    return done


# Between a message's id and the part of its owner that is the batch's own (`_begin`).
MESSAGE_SEPARATOR = "#"


def _claim(requested: list[int], owner: str, holding: Collection[int] = ()) -> list[int]:
    """Take up to MAX_BATCH studies, mark them `owner`'s and return their pks: one statement.

    First the requested studies still waiting, then a dead worker's orphans (studies of
    this same message, redelivered, other than those this call's drain is `holding`),
    then the oldest waiting: their own messages find them taken. Taking over an orphan
    counts as a restart of it (`attempts`). SKIP LOCKED lets
    concurrent workers take disjoint batches instead of queueing behind one another's
    locks and coming away with nothing; SQLite runs one writing transaction at a time,
    so there the statement itself is the lock.
    """
    now = timezone.now()
    # Orphans are the studies of any run of this owner's message (`_begin`), or, claimed
    # before owners had a part of their own, of the message itself. A direct call's
    # owner is new, so it finds none.
    message = owner.split(MESSAGE_SEPARATOR, 1)[0]
    of_this_message = Q(claimed_by=message) | Q(claimed_by__startswith=f"{message}{MESSAGE_SEPARATOR}")
    orphans = Q(status=STATUS.PROCESSING) & of_this_message & ~Q(pk__in=holding)
    claimable = Q(status=STATUS.QUEUED) | orphans
    batch = Study.objects.filter(claimable).order_by(
        Case(When(pk__in=requested, then=0), When(status=STATUS.PROCESSING, then=1), default=2),
        F("queued_at").asc(nulls_first=True),
        "pk",
    )[:MAX_BATCH]
    return _update_returning_pks(
        batch,
        "FOR UPDATE SKIP LOCKED",
        status=STATUS.PROCESSING,
        claimed_by=owner,
        started_at=now,
        updated_at=now,
        restarts_counted=True,
    )


def _update_returning_pks(rows: QuerySet, lock: str, *, restarts_counted: bool = False, **values) -> list[int]:
    """UPDATE the studies `rows` selects, locking them with `lock` where the database
    has row locks, and return their pks (sorted): one statement, one round trip.
    With `restarts_counted`, a study taken over while `processing` (a dead worker's)
    has its `attempts` raised by one in the same statement.

    The ORM would take a transaction and two queries (a locked select, then an update),
    four round trips with BEGIN and COMMIT; the worker makes one such change per batch
    on each side of the model, and on a loaded machine each round trip costs about a
    millisecond. PostgreSQL and SQLite (3.35+) both return the rows an UPDATE touched.

    The selection is a MATERIALIZED common table expression, run once. Written as
    `WHERE pk IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`, PostgreSQL may run the
    subquery again for every row of a nested loop, and each run skips the rows just
    locked and takes the next: with the statistics of a nearly empty table (a new
    database), a claim of at most 2 studies took all 4 that were waiting.
    """
    selected, params = rows.values("pk").query.sql_with_params()
    if connection.features.has_select_for_update:
        selected = f"{selected} {lock}"
    quote = connection.ops.quote_name
    fields = [Study._meta.get_field(name) for name in values]
    assignments = [f"{quote(field.column)} = %s" for field in fields]
    arguments = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    if restarts_counted:
        # The right-hand side reads the row as it was: `processing` before this claim.
        attempts, status = (quote(Study._meta.get_field(name).column) for name in ("attempts", "status"))
        assignments.append(f"{attempts} = CASE WHEN {status} = %s THEN {attempts} + 1 ELSE {attempts} END")
        arguments.append(STATUS.PROCESSING)
    table, pk = quote(Study._meta.db_table), quote(Study._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(
            # Only quoted names and the ORM's own SQL are formatted in; every value is a parameter.
            f"WITH chosen (pk) AS MATERIALIZED ({selected}) "  # noqa: S608
            f"UPDATE {table} SET {', '.join(assignments)} WHERE {pk} IN (SELECT pk FROM chosen) RETURNING {pk}",
            list(params) + arguments,
        )
        return sorted(row[0] for row in cursor.fetchall())


def _release(study_ids: list[int], owner: str, *, restarted: bool = False) -> None:
    """Put studies `owner` claimed back in the queue; if even that fails, the sweeper will.
    `restarted`: their processing was cut short, which counts an attempt. One the sweeper
    has since handed to another worker is left to that worker.

    Their message goes out now (a retry, or one of their own), hence `resent_at`: the
    sweeper waits from here, not from when they were first queued.
    """
    now = timezone.now()
    attempts = F("attempts") + 1 if restarted else F("attempts")
    try:
        Study.objects.filter(pk__in=study_ids, status=STATUS.PROCESSING, claimed_by=owner).update(
            status=STATUS.QUEUED, claimed_by="", started_at=None, resent_at=now, updated_at=now, attempts=attempts
        )
    except DatabaseError:
        log.warning("could not release %d claimed studies; the sweeper will re-queue them", len(study_ids))


def _store_duplicates(duplicates: list[Study], version: ModelVersion) -> list[int]:
    """Studies whose pixels were computed in this batch or the one before reuse that stored result."""
    if not duplicates:
        return []
    earlier = _reusable_predictions(duplicates, version)
    twins = [(study, earlier.get((study.hospital_id, study.pixel_sha256))) for study in duplicates]
    reused, not_reused = _reuse_all([(study, source) for study, source in twins if source is not None])
    # Its twin failed, was taken by another worker, or left a heatmap that could not be
    # read: predicted on its own.
    for study in [study for study, source in twins if source is None] + not_reused:
        _release([study.pk], study.claimed_by)
        publish([study.pk])
    return _store_all(reused)


def _serving_engine():
    try:
        return registry.get_serving_engine()
    except registry.RegistryError as exc:
        log.error("no usable model: %s", exc)
        raise ModelUnavailable(str(exc)) from exc


class _StorageIO:
    """Runs one batch's file reads or writes several at once, and hands back each one's
    result or exception, in order.

    One at a time, a batch's originals and heatmaps cost a round trip each. On local disk
    that is a fraction of a millisecond; from object storage (S3, as deploy/ runs GPU
    workers) it is milliseconds, against 1.7 to 2.3 ms a study in the model for a GPU
    worker process on the H100, so in turn they would set its pace (docs/benchmarks.md,
    eleventh stop: with a simulated 5 ms a file, 12.3 ms a study outside the model in
    turn, 2.9 ms with 8 threads). Threads suffice: the time is spent waiting on the
    network. What runs in them must not touch the database (Django gives each thread a
    connection of its own). The pool is made by the process that uses it, so a forked
    pool process gets its own.
    """

    def __init__(self):
        self._threads = _ThreadsOfThisProcess("pleura-storage")

    def map(self, function, items: list) -> list:
        threads = settings.PIPELINE_STORAGE_THREADS
        if len(items) < 2 or threads < 2:  # a study at idle waits for no thread
            return [_outcome(function, item) for item in items]
        try:
            return list(self._threads.pool(threads).map(_outcome, [function] * len(items), items))
        except BaseException:
            # Interrupted while waiting (the task's soft time limit): some of its threads
            # may never come back.
            self._threads.abandon()
            raise


def _outcome(function, item):
    try:
        return function(item)
    except Exception as exc:  # handed back to the calling thread, which decides
        return exc


def _first_error(outcomes: list) -> Exception | None:
    return next((outcome for outcome in outcomes if isinstance(outcome, Exception)), None)


storage_io = _StorageIO()


def _decode_all(studies: list[Study]) -> tuple[list[Study], list[np.ndarray], list[Study]]:
    """The studies decoded and their pixels, and those whose file alone could not be read.

    A storage error on every file is an outage: raised, the batch goes back as it is.
    Where the other files of the batch were read, it is that file's (a permission, an
    object the bucket refuses): returned, so the batch goes on without it.
    """
    ready, grays, unreadable, outage = [], [], [], None
    for study, outcome in zip(studies, storage_io.map(_load_gray, studies), strict=True):
        if isinstance(outcome, PermanentStudyError):
            _fail(study, outcome.reason, outcome.message)
        elif isinstance(outcome, StorageUnreachable):
            unreadable.append(study)
            outage = outage or outcome
        elif isinstance(outcome, Exception):
            raise outcome
        else:
            ready.append(study)
            grays.append(outcome)
    if outage is not None and not ready:
        if len(studies) == 1 and (isinstance(outage, UnreadableFile) or studies[0].attempts > 0):
            raise UnreadableFile(str(outage)) from outage
        raise outage
    return ready, grays, unreadable


class _PixelBudget:
    """At most `settings.PIPELINE_DECODE_PIXELS` pixels decoded at once by this process.

    A batch's files are decoded by the storage threads, 8 at once, and decoding costs
    memory by the pixel: 230 MB for a 16-bit DICOM at MAX_IMAGE_PIXELS, 905 MB for a
    half-transparent RGBA PNG (docs/benchmarks.md). Eight such files at once took more
    than the worker's memory limit (4 GiB in deploy/); radiographs of a few megapixels
    still decode together. A file larger than the whole budget waits to decode alone.
    Per process, as the threads are: a forked pool process starts with nothing held.

    A decode still running after `DECODE_HUNG_SECONDS` no longer counts. A decoder that
    hangs keeps its thread (the time limit reaches only the task's own thread), and its
    pixels, counted for ever, would have kept every later decode of the process waiting.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._holdings: dict[object, tuple[int, float]] = {}  # each decode's pixels and start
        self._pid = os.getpid()

    def _counted(self) -> int:
        now = time.monotonic()
        return sum(pixels for pixels, since in self._holdings.values() if now - since < DECODE_HUNG_SECONDS)

    @contextmanager
    def holding(self, study: Study):
        budget = max(settings.PIPELINE_DECODE_PIXELS, 1)  # 1 or less: one file at a time
        # A study stored before its size was kept counts as the largest allowed.
        pixels = min((study.rows or 0) * (study.columns or 0) or settings.MAX_IMAGE_PIXELS, budget)
        token = object()
        try:
            with self._condition:
                if self._pid != os.getpid():
                    self._holdings, self._pid = {}, os.getpid()
                # Woken when a decode ends, and every second besides: a hung one's pixels
                # stop counting with no decode ending.
                while self._counted() + pixels > budget:
                    self._condition.wait(timeout=1.0)
                # Inside the try: a time limit raised while taking them still gives them back.
                self._holdings[token] = (pixels, time.monotonic())
            yield
        finally:
            with self._condition:
                if self._holdings.pop(token, None) is not None:
                    self._condition.notify_all()


# The largest files bench/decode_memory.py decodes take under 1.5 s on the 2-core VM; a
# decode slower than this is taken for hung (and may then let one more decode start).
DECODE_HUNG_SECONDS = 60


decode_budget = _PixelBudget()


def _load_gray(study: Study) -> np.ndarray:
    from diagnostics import imaging  # the decoder pulls in pydicom and its plugins: load it where used

    try:
        # The budget covers the decode only: a read stalled on the storage held it, and
        # past DECODE_HUNG_SECONDS counted as hung, so the stalled reads then decoded
        # together, uncounted (review of this stop's late fixes).
        return imaging.load_grayscale(
            study, passthrough=(*TRANSIENT_ERRORS, MemoryError), decoding=partial(decode_budget.holding, study)
        )
    except MemoryError as exc:
        # The host's memory, not the file: failed as undecodable, a moment's pressure lost
        # the study for good, with no Analyse again (worker review). It counts an attempt.
        raise OutOfMemory(f"out of memory decoding study {study.code}") from exc
    except imaging.StoredFileMissing as exc:
        raise PermanentStudyError(metrics.REASON_MISSING_FILE, MISSING_FILE_MESSAGE) from exc
    except (imaging.StoredFileRefused, imaging.StoredFileUnreachable) as exc:
        unreadable = UnreadableFile if isinstance(exc, imaging.StoredFileRefused) else StorageUnreachable
        raise unreadable(f"study {study.code}: original unreadable ({exc})") from exc
    except imaging.StoredFileUndecodable as exc:  # none is worth a retry
        log.warning("study %s: stored original could not be decoded (%s)", study.code, exc)
        raise PermanentStudyError(metrics.REASON_UNDECODABLE, UNDECODABLE_MESSAGE) from exc


def _run_model(engine, grays: list[np.ndarray]) -> list:
    """Predict the batch; if it fails, predict one by one so one bad image fails alone."""
    if not grays:
        return []
    try:
        results = engine.predict(grays)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # isolate the image that broke the batch
        from mlcore.engine import is_out_of_memory, release_cached_memory  # torch: the worker's

        if is_out_of_memory(exc):
            release_cached_memory()
            if len(grays) == 1:  # not this image's fault: it goes back, counting an attempt
                raise OutOfMemory(f"out of memory on one image on {engine.device}") from exc
        elif len(grays) == 1:
            log.exception("inference failed on a single image")
            return [RuntimeError("inference failed")]
        return [item for gray in grays for item in _run_model(engine, [gray])]
    metrics.BATCH_SIZE.observe(len(grays))
    metrics.INFERENCE_LATENCY.observe(results[0].latency_ms / 1000.0)
    return results


# --- Storing results ------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity: two results are never the same one
class _Result:
    study: Study
    prediction: Prediction
    heatmap_png: bytes | None
    origin: str  # "computed" or "reused", the label of the predictions metric


def _computed(study: Study, version: ModelVersion, result) -> _Result:
    prediction = Prediction(
        study=study,
        model_version=version,
        probability=result.probability,
        label=result.label,
        threshold=result.threshold,
        device=result.device,
        latency_ms=result.latency_ms,
        batch_size=result.batch_size,
    )
    return _Result(study, prediction, result.heatmap_png, origin="computed")


def _reusable_predictions(studies: list[Study], version: ModelVersion) -> dict[tuple[int, str], Prediction]:
    """Earlier predictions of identical pixels, same hospital, same model version, by
    (hospital id, pixel sha256).

    Looked up from the studies' side: one query for the batch that almost always finds
    nothing, a second only on a match. The (hospital, pixel_sha256) index serves it once
    PostgreSQL has statistics; before that (a new database) it reads the hospital's
    studies once per batch. Both alternatives tried did worse without statistics: a
    correlated EXISTS in the batch's own query read them once per study, and joining
    from predictions compared every prediction of the version with every such study.
    """
    hashes = {study.pixel_sha256 for study in studies if study.pixel_sha256}
    if not hashes:
        return {}
    twins = {
        pk: (hospital_id, pixel_sha256)
        for pk, hospital_id, pixel_sha256 in Study.objects.filter(
            hospital_id__in={study.hospital_id for study in studies}, pixel_sha256__in=hashes
        )
        .exclude(pk__in=[study.pk for study in studies])
        .values_list("pk", "hospital_id", "pixel_sha256")
    }
    if not twins:
        return {}
    earliest: dict[tuple[int, str], Prediction] = {}
    for source in (
        Prediction.objects.shown()
        .filter(model_version=version, reused_from__isnull=True, study_id__in=twins)
        .order_by("created_at", "pk")
    ):
        source.model_version = version
        earliest.setdefault(twins[source.study_id], source)
    return earliest


def _reuse_all(reusing: list[tuple[Study, Prediction]]) -> tuple[list[_Result], list[Study]]:
    """The results reused, and the studies whose earlier heatmap could not be read, which
    are computed instead. One unreadable heatmap (a permission, an object the bucket
    refuses) raised for the whole batch, which went back without counting an attempt and,
    claimed again first, took every later batch down with it: the queue stood still
    (worker review). Gone, it was reused with no heatmap to show."""
    reused, computed = [], []
    for (study, _source), outcome in zip(reusing, storage_io.map(_reused_pair, reusing), strict=True):
        if isinstance(outcome, Exception):
            log.warning("earlier heatmap unreadable (%s): study %s is computed", type(outcome).__name__, study.pk)
            computed.append(study)
        else:
            reused.append(outcome)
    return reused, computed


def _reused_pair(pair: tuple[Study, Prediction]) -> _Result:
    return _reused(*pair)


def _reused(study: Study, source: Prediction) -> _Result:
    prediction = Prediction(
        study=study,
        model_version=source.model_version,
        probability=source.probability,
        label=source.label,
        threshold=source.threshold,
        device=source.device,
        latency_ms=0.0,
        batch_size=1,
        reused_from=source,
    )
    heatmap_png = None
    if source.heatmap:
        # Through the storage, not `source.heatmap.open()`: studies of one batch may share a
        # source, read in threads at once, and a FieldFile keeps the file it opened.
        with source.heatmap.storage.open(source.heatmap.name, "rb") as handle:
            heatmap_png = handle.read()
    return _Result(study, prediction, heatmap_png, origin="reused")


def _store_all(results: list[_Result]) -> list[int]:
    """Save the predictions and complete their studies in one transaction.

    Returns the ids completed. A study someone else finished meanwhile is skipped (see
    `_complete`); if the batch trips a constraint, each is stored on its own.
    """
    if not results:
        return []
    _save_heatmaps([result for result in results if result.heatmap_png])
    try:
        try:
            stored = _commit(results)
        except IntegrityError:
            stored = [result for result in results if _commit_alone(result)]
    except BaseException:
        # The database went away mid-store: the batch is retried, with heatmaps of new
        # names, so these would be left with no row pointing at them (patient images).
        _delete_unreferenced_heatmaps(results)
        raise
    _delete_heatmaps([result for result in results if result not in stored])
    for result in stored:
        metrics.PREDICTIONS.labels(label=result.prediction.label, origin=result.origin).inc()
        _observe_queue_wait(result.study)
    return [result.study.pk for result in stored]


def _observe_queue_wait(study: Study) -> None:
    """From queued to the claim that completed it, once per study: observed at every
    claim, a study put back and claimed again was counted again with its wait so far."""
    if study.queued_at and study.started_at:
        metrics.QUEUE_WAIT.observe(max(0.0, (study.started_at - study.queued_at).total_seconds()))


def _save_heatmaps(results: list[_Result]) -> None:
    """Write the batch's heatmap files; if one cannot be written, remove the others and raise."""
    error = _first_error(storage_io.map(_save_heatmap, results))
    if error is not None:
        _delete_heatmaps(results)
        raise StorageUnreachable(f"a heatmap could not be written ({type(error).__name__})") from error


def _save_heatmap(result: _Result) -> None:
    # A name of its own: after a sweeper's re-queue two workers can predict one study
    # with one model, and a write cut short is removed by its name.
    media.save_as_new(result.prediction.heatmap, f"{uuid.uuid4().hex[:12]}.png", result.heatmap_png)


def _commit(results: list[_Result]) -> list[_Result]:
    now = timezone.now()
    with transaction.atomic():
        completed = _complete([result.study for result in results], now)
        stored = [result for result in results if result.study.pk in completed]
        Prediction.objects.bulk_create([result.prediction for result in stored])
        audit.record_all([_audit_event(result) for result in stored])
    return stored


def _commit_alone(result: _Result) -> bool:
    """One study in its own transaction, so the one that trips a constraint fails alone."""
    try:
        return bool(_commit([result]))
    except IntegrityError:
        return False


def _complete(studies: list[Study], now) -> set[int]:
    """Complete the studies still claimed as they were read (by this batch), and say which
    those were.

    Only those: a worker the sweeper wrote off (a frozen machine, a hung mount) may store
    long after its studies were handed on; a study put back in the queue, given up, or
    sent again with a new file must not get the result of pixels it no longer has.
    Called inside the storing transaction: the row locks hold until it commits, so a
    study someone else completes meanwhile is either already excluded here or waits.
    """
    still_ours = Q(pk__in=[])
    for owner in {study.claimed_by for study in studies}:
        still_ours |= Q(pk__in=[study.pk for study in studies if study.claimed_by == owner], claimed_by=owner)
    open_studies = Study.objects.filter(still_ours, status=STATUS.PROCESSING)
    # Locked in pk order, so two workers completing overlapping studies never deadlock.
    return set(
        _update_returning_pks(
            open_studies.order_by("pk"),
            "FOR UPDATE",
            status=STATUS.COMPLETED,
            claimed_by="",
            completed_at=now,
            failure_reason="",
            failure_code="",
            updated_at=now,
        )
    )


def _audit_event(result: _Result):
    prediction = result.prediction
    return audit.build(
        audit.Action.PREDICTION_MADE,
        hospital=result.study.hospital,
        target=result.study,
        label=prediction.label,
        probability=round(prediction.probability, 4),
        model_version=prediction.model_version.name,
        reused=prediction.reused_from_id is not None,
    )


def _delete_unreferenced_heatmaps(results: list[_Result]) -> None:
    """Remove the heatmaps no stored prediction names. A commit whose answer was lost may
    have stored them: if the database cannot say, they stay (an orphan file is better
    than a result without its heatmap)."""
    names = [result.prediction.heatmap.name for result in results if result.prediction.heatmap]
    try:
        referenced = set(Prediction.objects.filter(heatmap__in=names).values_list("heatmap", flat=True))
    except DatabaseError:
        log.warning("could not tell which of %d heatmaps were stored; left in place", len(names))
        return
    _delete_heatmaps([result for result in results if result.prediction.heatmap.name not in referenced])


def _delete_heatmaps(results: list[_Result]) -> None:
    for result in results:
        if result.prediction.heatmap:
            media.remove_file(result.prediction.heatmap.storage, result.prediction.heatmap.name)


def _fail(study: Study, reason: str, message: str, *, from_status: str = STATUS.PROCESSING, **detail) -> bool:
    """Fail `study` if it is still as it was read: in `from_status`, claimed by the same
    owner (a stale worker's error must not fail a study another worker now predicts)."""
    now = timezone.now()
    with transaction.atomic():
        failed = Study.objects.filter(pk=study.pk, status=from_status, claimed_by=study.claimed_by).update(
            status=STATUS.FAILED,
            claimed_by="",
            failure_reason=message,
            failure_code=reason,
            completed_at=now,
            updated_at=now,
        )
        if failed:
            audit.record(
                audit.Action.PREDICTION_FAILED,
                hospital=study.hospital,
                target=study,
                outcome=audit.Outcome.FAILURE,
                reason=reason,
                **detail,
            )
    if failed:
        metrics.record_failure(reason)
    return bool(failed)


# --- Shadow candidate -----------------------------------------------------------------


# A shadow candidate whose weights would not load is tried again after this long, not on
# every batch: each try read and hashed its weights file (tens of MB) and logged a
# traceback while the doctors' batch waited.
SHADOW_RELOAD_SECONDS = 300
_shadow_load_failures: dict[tuple[int, str], float] = {}  # (pk, weights sha256) -> monotonic time


def _submit_shadow(candidate: ModelVersion | None, grays: list[np.ndarray]) -> Future | None:
    """Predict with the shadow candidate too, after the batch's own pass; stored with
    is_shadow=True, never shown. A failing candidate must never affect doctors' results."""
    if candidate is None:
        return None
    key = (candidate.pk, candidate.weights_sha256)
    failed_at = _shadow_load_failures.get(key)
    if failed_at is not None and time.monotonic() - failed_at < SHADOW_RELOAD_SECONDS:
        return None
    try:
        engine = registry.get_engine(candidate)
    except Exception:
        _shadow_load_failures[key] = time.monotonic()
        log.exception("shadow model %s could not be loaded; next try in %d s", candidate.name, SHADOW_RELOAD_SECONDS)
        return None
    _shadow_load_failures.pop(key, None)
    return model_runner.submit(_outcome, partial(engine.predict, with_heatmap=False), grays)


def _store_shadow(batch: _Batch, *, completed: set[int]) -> None:
    """The candidate's predictions of the batch's studies the active model completed.
    Not of one it failed: that study is analysed again one day, perhaps by this very
    candidate once promoted, and its hidden row would then block the shown one (one
    prediction per study and model version)."""
    if batch.shadowed is None:
        return
    results = batch.shadowed.result()
    try:
        if isinstance(results, Exception):
            raise results  # logged below with its traceback, as a failure to store is
        for study, result in zip(batch.ready, results, strict=True):
            if study.pk not in completed:
                continue
            Prediction.objects.get_or_create(
                study=study,
                model_version=batch.shadow,
                defaults={
                    "probability": result.probability,
                    "label": result.label,
                    "threshold": result.threshold,
                    "device": result.device,
                    "latency_ms": result.latency_ms,
                    "batch_size": result.batch_size,
                    "is_shadow": True,
                },
            )
    except SoftTimeLimitExceeded:
        raise
    except Exception:  # a failing candidate must never affect doctors' results
        log.exception("shadow model %s failed on a batch of %d", batch.shadow.name, len(batch.ready))


# --- The sweeper ----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    requeued: list[int]
    gave_up: list[int]


def sweep_stuck_studies(now=None) -> SweepResult:
    """Send again the messages of studies waiting in `queued` too long (a lost message, a
    broker restart, or a backlog), and re-queue studies stuck in `processing` (a dead
    worker); fail those after PIPELINE_MAX_ATTEMPTS tries, with a clear reason.

    Only a study a worker took counts an attempt: a backlog, or workers down for an
    hour, must not fail studies no worker has tried. PIPELINE_STUCK_SECONDS is longer than
    the task's hard time limit, so a study still `processing` past it has no live worker left.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.PIPELINE_STUCK_SECONDS)
    waiting_since = Coalesce("resent_at", "queued_at", "created_at")
    stuck = (
        Study.objects.annotate(waiting_since=waiting_since)
        .filter(
            Q(status=STATUS.QUEUED, waiting_since__lt=cutoff)
            | Q(status=STATUS.PROCESSING, started_at__lt=cutoff)
            | Q(status=STATUS.PROCESSING, started_at__isnull=True, updated_at__lt=cutoff)
        )
        .select_related("hospital")
        .order_by("pk")[:1000]
    )
    requeued, gave_up = [], []
    stuck = list(stuck)
    for study in stuck:
        if study.status == STATUS.QUEUED:
            if _send_again(study, now):
                requeued.append(study.pk)
        elif study.attempts >= settings.PIPELINE_MAX_ATTEMPTS:
            # Cut short once more, as a worker taking it over would count it: both ways,
            # it was tried PIPELINE_MAX_ATTEMPTS + 1 times (the first, and that many
            # restarts), where the sweeper's words said one fewer (pipeline review).
            if _give_up(study, from_status=study.status, attempts=study.attempts + 1):
                gave_up.append(study.pk)
        elif _requeue(study, now):
            requeued.append(study.pk)
    swept = {study.pk: study.status for study in stuck}
    for start in range(0, len(requeued), MAX_BATCH):
        sent = requeued[start : start + MAX_BATCH]
        if publish(sent):  # counted when sent: while the broker is down, none is (diff review)
            for status in (swept[pk] for pk in sent):
                metrics.SWEPT.labels(status=status).inc()
    if requeued or gave_up:
        log.info("sweeper: %d studies re-queued, %d given up", len(requeued), len(gave_up))
    return SweepResult(requeued=requeued, gave_up=gave_up)


def _give_up(study: Study, *, from_status: str, attempts: int | None = None) -> bool:
    """Fail a study restarted too often (by the sweeper, or after its workers died), unless
    it was claimed anew since it was read. `attempts`: the tries, if not its count."""
    attempts = study.attempts if attempts is None else attempts
    message = GAVE_UP_MESSAGE.format(attempts=attempts)
    return _fail(study, metrics.REASON_GAVE_UP, message, from_status=from_status, attempts=attempts)


def _requeue(study: Study, now) -> bool:
    """A `processing` study whose worker died: one attempt spent. Only under the claim
    the sweep found stuck: released and claimed by a live worker meanwhile, it was put
    back under that worker, whose work was then thrown away (worker review).

    It keeps the moment it was queued, which the queue's age is measured from: set anew at
    each re-queue, workers dying on every claim kept that age under the stall alert's 15
    minutes while studies went unanalysed (diff review). Its message goes out now, hence
    `resent_at`, which the sweeper waits from."""
    still_stuck = {"claimed_by": study.claimed_by, "started_at": study.started_at}
    updated = Study.objects.filter(pk=study.pk, status=study.status, attempts=study.attempts, **still_stuck).update(
        status=STATUS.QUEUED,
        claimed_by="",
        attempts=F("attempts") + 1,
        resent_at=now,
        started_at=None,
        updated_at=now,
    )
    return updated == 1


def _send_again(study: Study, now) -> bool:
    """A `queued` study no worker has taken: its message is sent again, nothing else changes."""
    return Study.objects.filter(pk=study.pk, status=STATUS.QUEUED, resent_at=study.resent_at).update(resent_at=now) == 1


def cpu_threads_per_process(pool_processes: int) -> int:
    """Torch threads for one pool process: INFERENCE_THREADS, or an equal share of the cores.

    Torch gives every process a thread per core, so a worker of N processes would run N
    times as many busy threads as cores, and they would preempt each other mid-batch.
    """
    if settings.INFERENCE_THREADS > 0:
        return settings.INFERENCE_THREADS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, pool_processes))


def warm_up(pool_processes: int = 1) -> None:
    """In a fresh pool process: take this process's share of the cores, load the active
    model and any shadow candidate now (after fork) and run them on a blank image (on CUDA
    at every batch size up to MAX_BATCH), so no study waits for the weights or the lazy
    set-up of a first forward pass (CUDA kernels, cuDNN plans for each batch shape, CPU
    kernel caches). The candidate runs after the active model in every batch, so the
    batch's studies would wait for its set-up too."""
    from mlcore.engine import use_cpu_threads  # torch: only the worker needs it

    threads = cpu_threads_per_process(pool_processes)
    use_cpu_threads(threads)
    try:
        version, engine, shadow = registry.get_serving_engine()
    except (registry.RegistryError, DatabaseError) as exc:
        log.warning("model not preloaded (%s); it will load with the first study", exc)
        return
    _warm(version, engine, with_heatmap=True)
    if shadow is not None:
        try:
            _warm(shadow, registry.get_engine(shadow), with_heatmap=False)
        except Exception:  # a failing candidate must never keep a worker from starting
            log.exception("shadow model %s could not be loaded", shadow.name)
    log.info("inference worker ready: model %s on %s, %d CPU threads", version.name, engine.device, threads)


def _warm(version: ModelVersion, engine, *, with_heatmap: bool) -> None:
    try:  # in the thread that will predict: CUDA keeps its handles per thread
        model_runner.submit(engine.warm_up, MAX_BATCH, with_heatmap).result()
    except Exception:  # a warm-up must never keep a worker from starting: the first study retries
        log.exception("model %s loaded, but its warm-up pass failed", version.name)
