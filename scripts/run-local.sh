#!/usr/bin/env bash
# `make run`: the web server, a Celery worker and Celery beat with the embedded
# defaults (SQLite under var/, a filesystem broker under var/broker/), stopped
# together on Ctrl-C or when any one of them exits.
#   usage: scripts/run-local.sh [HOST] [PORT]
set -euo pipefail

HOST="${1:-127.0.0.1}"
PORT="${2:-8000}"
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.local}"

# What Pleura writes under var/ (the database, originals, the broker's messages) holds
# patient data: this user's alone, on a shared workstation too. This user's files from an
# earlier run are made private as well; another user's (an earlier `sudo make run`) are
# left to their owner, as a chmod of them would stop the start here.
umask 077
mkdir -p var
find var -user "$(id -u)" -exec chmod go= {} +

# The filesystem transport does not create its folders; worker and beat need them.
BROKER_DIR="${BROKER_DIR:-$PWD/var/broker}"
export BROKER_DIR
mkdir -p "$BROKER_DIR/out" "$BROKER_DIR/processed" var/media var/celery

# Prometheus multiprocess mode: web and worker processes write metric files here and
# /metrics adds them up; files of an earlier run are stale.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$PWD/var/prometheus}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db

pids=()
stop_all() {
    trap - EXIT INT TERM
    echo
    echo "Stopping Pleura..."
    # The main processes first (Celery then shuts its pool down cleanly)...
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    # ...then whatever is left in their process groups (setsid), e.g. the server
    # process that runserver's autoreloader started.
    for pid in "${pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT INT TERM

start() {
    setsid "$@" &
    pids+=("$!")
}

start "$BIN/celery" -A config worker -Q celery,inference --concurrency 1 --loglevel INFO -n pleura@%h
# Retraining (`retrain_model --queue`) runs for hours: its own worker, so studies never wait behind it.
start "$BIN/celery" -A config worker -Q training --concurrency 1 --loglevel INFO -n training@%h
start "$BIN/celery" -A config beat --loglevel INFO --schedule var/celery/beat-schedule
start "$BIN/python" manage.py runserver "$HOST:$PORT"

sleep 3
cat <<BANNER

  Pleura is running at http://$HOST:$PORT/   (admin: http://$HOST:$PORT/admin/)
  Press Ctrl-C to stop the web server, the workers (inference, training) and beat.

BANNER
"$BIN/python" manage.py seed_demo --logins
echo

# Stop everything as soon as one service dies, so a crash is not hidden.
wait -n "${pids[@]}"
