#!/usr/bin/env bash
# One entry point for every Pleura process, in containers and on bare machines alike
# (deploy/smoke.sh runs it natively). Usage: entrypoint.sh web|worker|worker-gpu|worker-training|beat|migrate|manage ARGS...
set -euo pipefail
cd "$(dirname "$0")/.."

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.production}"

# Prometheus multiprocess mode: each process writes its metrics to files in this folder,
# which must start empty (stale files from a previous run would add old counts).
prepare_metrics_dir() {
    if [[ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        # A file another process of the same folder removes meanwhile is no reason to stop
        # (fresh-machine review: the worker exited, saying only "cannot delete").
        find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete || true
    fi
}

worker() {
    # $1: queues, $2: node name suffix. One task at a time per process (prefetch 1, acks
    # late) so a slow prediction never holds messages another process could take.
    prepare_metrics_dir
    exec celery -A config worker \
        --queues "$1" \
        --concurrency "${CELERY_CONCURRENCY:-2}" \
        --prefetch-multiplier 1 \
        --hostname "$2@${CELERY_HOSTNAME:-%h}" \
        --loglevel "${LOG_LEVEL:-INFO}" \
        --without-mingle
}

command="${1:-web}"
shift || true
case "$command" in
    web)
        prepare_metrics_dir
        exec gunicorn --config deploy/gunicorn.conf.py config.wsgi:application "$@"
        ;;
    worker)
        worker "${CELERY_QUEUES:-celery,inference}" cpu
        ;;
    worker-gpu)
        # GPU machines take only inference. The worker's Python (claims, decoding, storing,
        # kernel launches) is the bottleneck, not the GPU: four processes of one torch
        # thread each, sharing one GPU, outran one process on the same four cores
        # (docs/benchmarks.md). Give the container as many cores as processes.
        CELERY_CONCURRENCY="${CELERY_CONCURRENCY:-4}" INFERENCE_THREADS="${INFERENCE_THREADS:-1}" \
            worker "${CELERY_QUEUES:-inference}" gpu
        ;;
    worker-training)
        # Retraining (`manage.py retrain_model --queue`): one run at a time, for hours, on a
        # worker of its own so studies never wait behind it.
        CELERY_CONCURRENCY=1 worker "${CELERY_QUEUES:-training}" training
        ;;
    beat)
        # Exactly one beat per deployment (compose: one service; k8s: replicas 1, Recreate).
        exec celery -A config beat --loglevel "${LOG_LEVEL:-INFO}" \
            --schedule "${CELERY_BEAT_SCHEDULE_FILE:-/tmp/celerybeat-schedule}"
        ;;
    migrate)
        # A misconfigured release is refused before it changes the database.
        python manage.py check --deploy --fail-level WARNING
        python manage.py migrate --noinput
        # The shipped model, registered and active on a new installation (idempotent).
        python manage.py ensure_default_model
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    *)
        echo "usage: $0 web|worker|worker-gpu|worker-training|beat|migrate|manage ARGS..." >&2
        exit 64
        ;;
esac
