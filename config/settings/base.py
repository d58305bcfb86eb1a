"""Settings shared by every profile. Profiles (local, test, production) override them."""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.cache import redis_cache_settings
from config.settings.env import env_bool, env_int, env_list, env_networks, env_rate, env_str, env_timezone

BASE_DIR = Path(__file__).resolve().parent.parent.parent
SHARED_DIR = BASE_DIR.parent / "shared"

SECRET_KEY = env_str("SECRET_KEY", "insecure-development-key-never-use-in-production-0123456789")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Peers whose X-Real-IP header names the caller (hospital.audit.client_ip): addresses or
# networks, "*" for any. The same proxies gunicorn trusts for X-Forwarded-Proto unless set.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES", env_networks("FORWARDED_ALLOW_IPS", ["127.0.0.1", "::1"]))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "accounts",
    "hospital",
    "mlcore",
    "diagnostics",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "diagnostics.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Django's, but a page's own polling does not keep an idle session alive.
    "accounts.sessions.IdleSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.sessions.EndRefusedSessionsMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "hospital.middleware.ActiveHospitalMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "hospital.context_processors.active_hospital",
            ],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'pleura.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend, with a health check that costs no round trip (config/postgresql).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # `make run` puts web, worker and beat on one file. Transactions take the write lock
    # when they begin and wait up to 20 s for it, instead of failing with "database is
    # locked" when a read-then-write transaction meets another writer. Options in
    # DATABASE_URL (`?timeout=1`) still win.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        **DATABASES["default"].get("OPTIONS", {}),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.LockoutModelBackend"]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "diagnostics:worklist"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed logins before one address may no longer try an account, failed logins from all
# addresses before the account itself is locked, and for how long (accounts.backends).
LOGIN_LOCKOUT_THRESHOLD = env_int("LOGIN_LOCKOUT_THRESHOLD", 5)
LOGIN_ACCOUNT_LOCKOUT_THRESHOLD = env_int("LOGIN_ACCOUNT_LOCKOUT_THRESHOLD", 50)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60)

# Sessions expire after inactivity: every request pushes the expiry forward.
SESSION_COOKIE_AGE = env_int("SESSION_IDLE_SECONDS", 30 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# A refused CSRF check says, in words, that the page is out of date (config/errors.py).
CSRF_FAILURE_VIEW = "config.errors.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_timezone("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]

# Uploaded radiographs and heatmaps are PHI: they live outside any public URL and are
# served only by tenant-checked views (MEDIA_URL is deliberately not routed).
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
MEDIA_URL = "/protected-media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Upload limits (bytes and pixels); checked before anything is decoded.
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 100 * 1024 * 1024)
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 60_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Model weights shipped with the product (see mlcore/weights/README.md), and where the
# registry's versions live: the same folder by default; in containers, whose image is
# read-only, a volume every process shares, into which ensure_default_model copies the
# shipped model and retraining writes its candidates.
SHIPPED_MODELS_DIR = BASE_DIR / "mlcore" / "weights"
MODEL_WEIGHTS_DIR = Path(env_str("MODEL_WEIGHTS_DIR", str(SHIPPED_MODELS_DIR)))
DEFAULT_MODEL_NAME = env_str("DEFAULT_MODEL_NAME", "pleura-resnet18-v1")
TRAINING_DATA_DIR = Path(env_str("TRAINING_DATA_DIR", str(SHARED_DIR / "data" / "chest_xray" / "train")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hospital.api.IntegrationKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"integration_key": env_rate("API_KEY_THROTTLE_RATE", "600/min")},
    "EXCEPTION_HANDLER": "hospital.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Pleura API",
    "DESCRIPTION": "Chest X-ray pneumonia detection: ingestion of studies and their results.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # A request's own components: shared with the responses, an upload's `file` was a URI, and
    # generated clients sent a URL as text (EMR review).
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files: the docs work without internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "LabelEnum": "diagnostics.models.Label",
        "WarningCodeEnum": "diagnostics.imaging.WARNING_CHOICES",
    },
}

# Celery. The database is the source of truth for study status, so no result backend.
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    # http://x passed `check --deploy`, the release gate, and failed at the first upload.
    raise ImproperlyConfigured(
        f"REDIS_URL must start with redis://, rediss:// or unix://, not {REDIS_URL.split(':', 1)[0]!r}:."
    )
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
BROKER_DIR = Path(env_str("BROKER_DIR", str(BASE_DIR / "var" / "broker")))


def filesystem_broker_options(broker_dir: Path) -> dict:
    return {
        "data_folder_in": str(broker_dir / "out"),
        "data_folder_out": str(broker_dir / "out"),
        "processed_folder": str(broker_dir / "processed"),
        # Broadcast/pidbox exchanges; without this kombu writes them to ./control.
        "control_folder": str(broker_dir / "control"),
        "store_processed": False,
    }


# Publishing at upload time must fail fast when the broker is down (the sweeper re-queues).
CELERY_BROKER_CONNECTION_TIMEOUT = env_int("CELERY_BROKER_CONNECTION_TIMEOUT", 2)


def redis_broker_options() -> dict:
    """A broker that accepts connections but never answers (a failover, a dead NAT entry)
    held each upload's publish for good, and so a web worker until gunicorn killed it
    (worker review): blocking reads give up after `socket_timeout`, well above the 1 s
    that a worker's BRPOP waits."""
    return {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600),
        "socket_timeout": env_int("CELERY_BROKER_SOCKET_TIMEOUT", 5),
        "socket_connect_timeout": CELERY_BROKER_CONNECTION_TIMEOUT,
    }


CELERY_BROKER_TRANSPORT_OPTIONS = (
    filesystem_broker_options(BROKER_DIR) if CELERY_BROKER_URL.startswith("filesystem://") else redis_broker_options()
)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
CELERY_RESULT_SERIALIZER = "json"
# Inference has its own queue so GPU machines consume only `inference`; housekeeping stays on `celery`.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"diagnostics.predict_studies": {"queue": "inference"}, "diagnostics.*": {"queue": "celery"}}
# Retraining runs for hours: on the inference queue it held a worker process that studies
# waited behind (the only one under `make run`). It has its own queue and worker.
CELERY_TASK_ROUTES["mlcore.retrain_model"] = {"queue": "training"}
# One message at a time per process, acknowledged after the work: a slow batch holds no
# other message, and a message whose worker died is delivered again.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 120)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 180)
# Loading torch and the weights in a fresh pool process takes longer than Celery's 4 s default.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 60
# A pool process whose resident memory has grown past this after a task is replaced by a
# fresh one (which loads the model again), so a leak in a decoder or in torch cannot grow
# until the kernel kills the worker mid-batch. billiard compares the process's peak resident
# memory. An inference pool process peaked at 887 MiB on the CPU through 128 uploads of
# 2048-pixel DICOM, and bench/inference.py at 1.2 GiB on CUDA (docs/benchmarks.md). 0: off.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB", 2048, minimum=0) * 1024 or None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The pipeline: studies stuck in queued/processing longer than this are re-queued by the
# sweeper (every PIPELINE_SWEEP_SECONDS), at most PIPELINE_MAX_ATTEMPTS times: a study is
# tried that many times and once more, then fails, "after PIPELINE_MAX_ATTEMPTS + 1 attempts".
# Studies one worker predicts in one batch (see diagnostics/pipeline.py for the measurements).
PIPELINE_MAX_BATCH = env_int("PIPELINE_MAX_BATCH", 16)
# How long one message may go on predicting batches while more studies keep arriving
# (well under the task's soft time limit); then the next message takes over.
PIPELINE_DRAIN_SECONDS = env_int("PIPELINE_DRAIN_SECONDS", 30)
# One message waiting for a worker at a time, not one per upload (diagnostics/pipeline.py,
# _WakeUps): needs a cache that the web and worker processes share, so on with Redis.
PIPELINE_COALESCE_WAKE_UPS = env_bool("PIPELINE_COALESCE_WAKE_UPS", bool(REDIS_URL))
# Files of one batch read and written at once (originals, heatmaps): with object storage
# each is a network round trip, which one at a time add up for every batch. 1: in turn.
PIPELINE_STORAGE_THREADS = env_int("PIPELINE_STORAGE_THREADS", 8)
# Pixels a worker process decodes at once (diagnostics.pipeline._PixelBudget): decoding
# costs memory by the pixel, so eight of the largest files at once could outgrow the
# worker's memory. By default one image of the largest size accepted, or many radiographs.
PIPELINE_DECODE_PIXELS = env_int("PIPELINE_DECODE_PIXELS", MAX_IMAGE_PIXELS)
PIPELINE_STUCK_SECONDS = env_int("PIPELINE_STUCK_SECONDS", 300)
PIPELINE_MAX_ATTEMPTS = env_int("PIPELINE_MAX_ATTEMPTS", 3)
PIPELINE_SWEEP_SECONDS = env_int("PIPELINE_SWEEP_SECONDS", 60)
# Torch CPU threads per worker pool process; 0 gives each of the pool's processes an
# equal share of the cores the worker may use (see diagnostics.pipeline.cpu_threads_per_process).
INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0)
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-studies": {"task": "diagnostics.sweep_stuck_studies", "schedule": float(PIPELINE_SWEEP_SECONDS)}
}

REDIS_CACHE_TIMEOUT_SECONDS = env_int("REDIS_CACHE_TIMEOUT_SECONDS", 1)
# After Redis (the cache) or the broker failed to answer, how long this process skips it
# (config.fail_fast): the rate limit goes unapplied, and the studies stored meanwhile
# are claimed by the next message a worker takes, or sent by the sweeper.
UNANSWERED_SKIP_SECONDS = env_int("UNANSWERED_SKIP_SECONDS", 10)
CACHES = {
    "default": (
        redis_cache_settings(REDIS_URL, REDIS_CACHE_TIMEOUT_SECONDS)
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# "json" (one object per line, production default) or "plain"; both carry the request id.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "diagnostics.observability.RequestIdFilter"},
        "safe_path": {"()": "config.safe_paths.SafePathFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "diagnostics.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id", "safe_path"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Django's "Not Found: <path>" and other 4xx lines repeat the raw path, whatever an
        # EMR put in it; pleura.request logs each request with its path made safe.
        "django.request": {"level": "ERROR"},
        # Pillow logs each short EXIF value at DEBUG, and a JPEG's ImageDescription or Artist
        # may name the patient: LOG_LEVEL=DEBUG must not put it in the logs.
        "PIL": {"level": "INFO"},
    },
}
