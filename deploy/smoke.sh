#!/usr/bin/env bash
# Production smoke test without Docker: the real production processes, natively, on
# loopback. gunicorn + Celery worker + beat (through deploy/entrypoint.sh, as in the
# images) with config.settings.production, nginx (deploy/nginx/pleura.conf.template)
# with a self-signed certificate, PostgreSQL and Redis of this machine.
#
# It uploads a real radiograph (DICOM with patient fields) over HTTPS with an
# integration key, waits for the prediction, fetches the heatmap through the protected
# media path (X-Accel-Redirect), checks /readyz, the security headers and that /metrics
# counters moved, checks no patient identifier reached any log, validates the
# Prometheus configuration and rules with promtool, and stops everything it started.
#
#   deploy/smoke.sh            (needs nginx, openssl, promtool, psql, redis-cli, curl)
# Environment: SMOKE_PG (server URL, default postgres://postgres@127.0.0.1:5432),
# SMOKE_REDIS_URL (default redis://127.0.0.1:6379/5), SMOKE_PORT_BASE (default 18000).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
export PATH="$VENV_BIN:$PATH"

PG_SERVER="${SMOKE_PG:-postgres://postgres@127.0.0.1:5432}"
export PGOPTIONS="-c client_min_messages=warning"
DB_NAME="${SMOKE_DB:-pleura_smoke}"
REDIS="${SMOKE_REDIS_URL:-redis://127.0.0.1:6379/5}"
PORT_BASE="${SMOKE_PORT_BASE:-18000}"
WEB_PORT=$PORT_BASE
HTTP_PORT=$((PORT_BASE + 80))
HTTPS_PORT=$((PORT_BASE + 443))
WORKER_METRICS_PORT=$((PORT_BASE + 808))
ORIGIN="https://localhost:$HTTPS_PORT"
DICOM="${SMOKE_DICOM:-$ROOT/../shared/data/dicom/nih-chestxray14-dx-no-finding.dcm}"
# Distinctive identifiers written into the uploaded copy; none may appear in any log.
PHI_NAME="SMOKEPHI^ZEBEDEE"
PHI_ID="SMK-7731-PHI"

# nginx workers (user nobody when started as root) read static files and media below $WORK.
umask 022
WORK="$(mktemp -d /tmp/pleura-smoke.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
NGINX_STARTED=0
OK=0

log() { printf '\033[1m[smoke]\033[0m %s\n' "$*"; }
fail() {
    printf '\033[31m[smoke] FAIL:\033[0m %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$?
    set +e
    if [[ $NGINX_STARTED == 1 ]]; then nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -s quit 2>/dev/null; fi
    for pid in "${PIDS[@]}"; do
        # Each process was started with setsid: its group is ours alone.
        kill -TERM -- "-$pid" 2>/dev/null
    done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    psql "$PG_SERVER/postgres" -qAtc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1
    redis-cli -u "$REDIS" FLUSHDB >/dev/null 2>&1
    if [[ $OK != 1 ]]; then
        mkdir -p "$ROOT/test-artifacts/smoke"
        cp "$WORK"/*.log "$WORK"/nginx/*.log "$ROOT/test-artifacts/smoke/" 2>/dev/null
        echo "[smoke] logs kept in test-artifacts/smoke/" >&2
        for f in "$WORK"/*.log; do echo "----- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; done
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

start() {
    # start NAME COMMAND...: in its own process group, output to $WORK/NAME.log
    local name=$1
    shift
    setsid "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

wait_for() {
    # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq 1 $((seconds * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    fail "$what did not happen within ${seconds}s"
}

metric() {
    # metric URL NAME_REGEX: sum of the samples whose name+labels match.
    curl -fsS "$1" | awk -v re="$2" '$0 !~ /^#/ && $1 ~ re {s += $2} END {printf "%d\n", s}'
}

for tool in nginx openssl promtool psql redis-cli curl setsid; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install nginx-light prometheus openssl curl)"
done
[[ -f "$DICOM" ]] || fail "radiograph $DICOM not found"

log "promtool: configuration, rules and rule unit tests"
mkdir -p "$WORK/prometheus"
cp deploy/prometheus/alerts.yml "$WORK/prometheus/alerts.yml"
sed "s#/etc/prometheus/alerts.yml#$WORK/prometheus/alerts.yml#" deploy/prometheus/prometheus.yml >"$WORK/prometheus/prometheus.yml"
promtool check config "$WORK/prometheus/prometheus.yml" >/dev/null
promtool check rules deploy/prometheus/alerts.yml >/dev/null
promtool test rules deploy/prometheus/alerts_test.yml >/dev/null

log "PostgreSQL database $DB_NAME and Redis $REDIS"
psql "$PG_SERVER/postgres" -qAtc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null
psql "$PG_SERVER/postgres" -qAtc "CREATE DATABASE $DB_NAME" >/dev/null
redis-cli -u "$REDIS" FLUSHDB >/dev/null

export DJANGO_SETTINGS_MODULE=config.settings.production
SECRET_KEY="$(openssl rand -base64 48)"
export SECRET_KEY
export DATABASE_URL="$PG_SERVER/$DB_NAME"
export REDIS_URL="$REDIS"
export ALLOWED_HOSTS="localhost,127.0.0.1"
export CSRF_TRUSTED_ORIGINS="$ORIGIN"
export MEDIA_ROOT="$WORK/media"
export STATIC_ROOT="$WORK/static"
export LOG_FORMAT=json
export LOG_LEVEL=DEBUG
export PYTHONUNBUFFERED=1
export MPLCONFIGDIR="$WORK/mpl"
# An empty models folder, as the containers' volume starts: migrate copies the shipped
# model into it (set MODEL_WEIGHTS_DIR / DEFAULT_MODEL_NAME to try another model).
export MODEL_WEIGHTS_DIR="${MODEL_WEIGHTS_DIR:-$WORK/models}"

log "migrate (with check --deploy and the shipped model), collectstatic, hospital and integration key"
deploy/entrypoint.sh migrate >"$WORK/migrate.log" 2>&1 || fail "migrate failed: $(tail -n 20 "$WORK/migrate.log")"
grep -q "^active model: " "$WORK/migrate.log" || fail "migrate left no active model: $(tail -n 5 "$WORK/migrate.log")"
manage() {
    deploy/entrypoint.sh manage "$@" >"$WORK/manage-$1.log" 2>&1 || fail "manage.py $1: $(tail -n 5 "$WORK/manage-$1.log")"
}
manage collectstatic --noinput
manage create_hospital --name "Smoke General" --slug smoke-general
manage create_api_key --hospital smoke-general --name "smoke EMR"
KEY="$(tail -n 1 "$WORK/manage-create_api_key.log")"
[[ ${#KEY} -ge 20 ]] || fail "create_api_key printed no key"

log "gunicorn, Celery worker and beat (production settings)"
mkdir -p "$WORK/prom-web" "$WORK/prom-worker"
start web env GUNICORN_BIND="127.0.0.1:$WEB_PORT" GUNICORN_WORKERS=2 GUNICORN_THREADS=2 \
    PROMETHEUS_MULTIPROC_DIR="$WORK/prom-web" deploy/entrypoint.sh web
start worker env CELERY_CONCURRENCY=1 PROMETHEUS_MULTIPROC_DIR="$WORK/prom-worker" \
    WORKER_METRICS_PORT="$WORKER_METRICS_PORT" WORKER_METRICS_ADDR=127.0.0.1 deploy/entrypoint.sh worker
start beat env PROMETHEUS_MULTIPROC_DIR="$WORK/prom-worker" CELERY_BEAT_SCHEDULE_FILE="$WORK/beat-schedule" \
    deploy/entrypoint.sh beat

log "nginx with a self-signed certificate"
mkdir -p "$WORK/nginx/tmp"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/nginx/tls.key" -out "$WORK/nginx/tls.crt" 2>/dev/null
PLEURA_SERVER_NAME=localhost PLEURA_PUBLIC_ORIGIN="$ORIGIN" \
    PLEURA_HTTP_LISTEN="127.0.0.1:$HTTP_PORT" PLEURA_HTTPS_LISTEN="127.0.0.1:$HTTPS_PORT" \
    PLEURA_UPSTREAM="127.0.0.1:$WEB_PORT" PLEURA_TLS_CERT="$WORK/nginx/tls.crt" PLEURA_TLS_KEY="$WORK/nginx/tls.key" \
    PLEURA_STATIC_ROOT="$STATIC_ROOT" PLEURA_MEDIA_ROOT="$MEDIA_ROOT" PLEURA_MAX_BODY=110m \
    PLEURA_RESOLVER=127.0.0.1 PLEURA_ACCESS_LOG="$WORK/nginx/access.log" \
    python scripts/render_nginx_template.py deploy/nginx/pleura.conf.template "$WORK/nginx/pleura.conf"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/pleura.conf;
}
EOF
nginx -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx-t.log" || fail "nginx -t: $(cat "$WORK/nginx-t.log")"
start nginx nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
NGINX_STARTED=1

CURL=(curl -sS --cacert "$WORK/nginx/tls.crt" --max-time 30)
wait_for 60 "gunicorn answering /healthz" curl -fsS "http://127.0.0.1:$WEB_PORT/healthz"
wait_for 20 "nginx answering over HTTPS" "${CURL[@]}" -f "$ORIGIN/healthz"
wait_for 90 "the worker serving its metrics" curl -fsS "http://127.0.0.1:$WORKER_METRICS_PORT/metrics"

log "/readyz from gunicorn, and closed to the outside by nginx"
READY="$(curl -sS --max-time 30 "http://127.0.0.1:$WEB_PORT/readyz")"
[[ "$READY" == '{"status": "ok", "checks": {"database": "ok", "migrations": "ok", "broker": "ok", "model": "ok"}}' ]] ||
    fail "/readyz answered $READY"
OUTSIDE="$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$ORIGIN/readyz")"
[[ "$OUTSIDE" == 404 ]] || fail "/readyz through nginx answered $OUTSIDE, not 404"

log "TLS redirect and security headers"
REDIRECT="$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$HTTP_PORT/some/where?x=1")"
[[ "$REDIRECT" == "308 $ORIGIN/some/where?x=1" ]] || fail "HTTP answered '$REDIRECT' instead of a redirect to HTTPS"
HEADERS="$("${CURL[@]}" -D - -o /dev/null "$ORIGIN/accounts/login/")"
for header in "strict-transport-security: max-age=31536000; includeSubDomains; preload" \
    "x-frame-options: DENY" "x-content-type-options: nosniff" "content-security-policy: default-src 'self'"; do
    grep -qi "^$header" <<<"$HEADERS" || fail "missing header '$header'"
done
[[ "$(grep -ci '^x-frame-options' <<<"$HEADERS")" == 1 ]] || fail "X-Frame-Options sent twice"
STATIC="$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$ORIGIN/static/vendor/htmx.min.js")"
[[ "$STATIC" == 200 ]] || fail "static file through nginx answered $STATIC"
[[ "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$ORIGIN/metrics")" == 404 ]] || fail "/metrics is public"

WEB_METRICS="http://127.0.0.1:$WEB_PORT/metrics"
WORKER_METRICS="http://127.0.0.1:$WORKER_METRICS_PORT/metrics"
RECEIVED_BEFORE="$(metric "$WEB_METRICS" '^pleura_studies_received_total[{]source="api"')"
PREDICTED_BEFORE="$(metric "$WORKER_METRICS" '^pleura_predictions_total')"
BATCHES_BEFORE="$(metric "$WORKER_METRICS" '^pleura_inference_batch_size_count')"

log "upload a real radiograph (DICOM) through nginx with the integration key"
python - "$DICOM" "$WORK/upload.dcm" "$PHI_NAME" "$PHI_ID" <<'PY'
import sys
import pydicom
ds = pydicom.dcmread(sys.argv[1], force=True)
ds.PatientName, ds.PatientID = sys.argv[3], sys.argv[4]
ds.save_as(sys.argv[2], enforce_file_format=True)
PY
UPLOAD="$("${CURL[@]}" -D "$WORK/upload.headers" -o "$WORK/upload.json" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F "file=@$WORK/upload.dcm;type=application/dicom" "$ORIGIN/api/v1/studies/")"
[[ "$UPLOAD" == 202 ]] || fail "upload answered $UPLOAD: $(cat "$WORK/upload.json")"
STUDY="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/upload.json")"
REQUEST_ID="$(awk 'tolower($1) == "x-request-id:" {print $2}' "$WORK/upload.headers" | tr -d '\r')"
[[ -n "$REQUEST_ID" ]] || fail "the upload response has no X-Request-ID"

log "wait for the prediction of study $STUDY"
STATUS=""
for _ in $(seq 1 120); do
    "${CURL[@]}" -H "Authorization: Bearer $KEY" "$ORIGIN/api/v1/studies/$STUDY/" >"$WORK/study.json"
    STATUS="$(python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("status"))' "$WORK/study.json")"
    [[ "$STATUS" == completed || "$STATUS" == failed ]] && break
    sleep 1
done
[[ "$STATUS" == completed ]] || fail "study ended '$STATUS': $(cat "$WORK/study.json")"
python - "$WORK/study.json" <<'PY'
import json, sys
prediction = json.load(open(sys.argv[1]))["prediction"]
assert prediction["label"] in ("pneumonia", "normal"), prediction
assert 0.0 <= prediction["probability"] <= 1.0, prediction
print(f"[smoke] prediction: {prediction['label']} p={prediction['probability']:.3f}")
PY

log "heatmap through the protected-media path"
HEATMAP="$("${CURL[@]}" -L -D "$WORK/heatmap.headers" -o "$WORK/heatmap.png" -w '%{http_code} %{content_type}' \
    -H "Authorization: Bearer $KEY" "$ORIGIN/api/v1/studies/$STUDY/heatmap")"
[[ "$HEATMAP" == "200 image/png" ]] || fail "heatmap answered '$HEATMAP'"
[[ "$(head -c 8 "$WORK/heatmap.png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] || fail "heatmap is not a PNG"
grep -qi '^x-accel-redirect' "$WORK/heatmap.headers" && fail "X-Accel-Redirect leaked to the client"
# Behind nginx, Django only authorizes: gunicorn's own answer is empty and names the internal path.
DIRECT="$(curl -sS -L -D - -o "$WORK/direct.body" -H "Authorization: Bearer $KEY" -H "X-Forwarded-Proto: https" \
    "http://127.0.0.1:$WEB_PORT/api/v1/studies/$STUDY/heatmap")"
ACCEL="$(awk 'tolower($1) == "x-accel-redirect:" {print $2}' <<<"$DIRECT" | tr -d '\r')"
[[ "$ACCEL" == /_protected/media/studies/*.png && ! -s "$WORK/direct.body" ]] || fail "Django did not hand the heatmap to nginx: '$ACCEL'"
INTERNAL="$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$ORIGIN$ACCEL")"
[[ "$INTERNAL" == 404 ]] || fail "the internal media location answered $INTERNAL to a client"
OUTSIDER="$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$ORIGIN/api/v1/studies/$STUDY/heatmap/")"
[[ "$OUTSIDER" == 401 || "$OUTSIDER" == 403 ]] || fail "heatmap without a key answered $OUTSIDER"

log "metrics moved"
RECEIVED_AFTER="$(metric "$WEB_METRICS" '^pleura_studies_received_total[{]source="api"')"
PREDICTED_AFTER="$(metric "$WORKER_METRICS" '^pleura_predictions_total')"
BATCHES_AFTER="$(metric "$WORKER_METRICS" '^pleura_inference_batch_size_count')"
[[ $((RECEIVED_AFTER - RECEIVED_BEFORE)) == 1 ]] || fail "studies received moved $RECEIVED_BEFORE -> $RECEIVED_AFTER"
[[ $((PREDICTED_AFTER - PREDICTED_BEFORE)) == 1 ]] || fail "predictions moved $PREDICTED_BEFORE -> $PREDICTED_AFTER"
[[ $((BATCHES_AFTER - BATCHES_BEFORE)) == 1 ]] || fail "inference batches moved $BATCHES_BEFORE -> $BATCHES_AFTER"
[[ "$(metric "$WEB_METRICS" '^django_http_responses_total_by_status_total')" -gt 0 ]] || fail "no django request metrics"

log "logs: JSON lines, the upload's request id reached the worker, no patient identifier anywhere"
sleep 1
grep -q "\"request_id\": \"$REQUEST_ID\"" "$WORK/web.log" || fail "web log has no line for request $REQUEST_ID"
grep -q "\"request_id\": \"$REQUEST_ID\"" "$WORK/worker.log" || fail "worker log has no line for request $REQUEST_ID"
grep -q "\"request_id\":\"$REQUEST_ID\"" "$WORK/nginx/access.log" || fail "nginx log has no line for request $REQUEST_ID"
# A caller's request id in a shape Django refuses is replaced in nginx's log too, by the id
# Django answers with: the two logs meet on one id.
"${CURL[@]}" -D "$WORK/forged.headers" -o /dev/null -H 'X-Request-ID: forged"id; rm -rf /' "$ORIGIN/healthz"
FORGED_ANSWER="$(awk 'tolower($1) == "x-request-id:" {print $2}' "$WORK/forged.headers" | tr -d '\r')"
sleep 1
! grep -q 'forged' "$WORK/nginx/access.log" || fail "nginx logged a request id Django refused"
grep -q "\"request_id\":\"$FORGED_ANSWER\"" "$WORK/nginx/access.log" || fail "nginx and Django disagree on a replaced request id"
python - "$WORK/web.log" "$WORK/worker.log" <<'PY'
import json, sys
for path in sys.argv[1:]:
    lines = [line for line in open(path) if line.startswith("{")]
    assert lines, f"{path}: no JSON lines"
    for line in lines:
        json.loads(line)
PY
for phi in "$PHI_NAME" "$PHI_ID" "SMOKEPHI" "ZEBEDEE"; do
    if grep -rqF "$phi" "$WORK"/*.log "$WORK/nginx/access.log" "$WORK/nginx/error.log"; then
        fail "patient identifier '$phi' found in the logs"
    fi
done

OK=1
log "PASS"
