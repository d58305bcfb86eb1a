"""Production: every secret comes from the environment, nothing insecure by default.

See deploy/README.md for the full list of variables. Passes `manage.py check --deploy`.
"""

from __future__ import annotations

import socket

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import LOGGING, STORAGES
from config.settings.env import env_bool, env_int, env_list, env_str

SECRET_KEY = env_str("SECRET_KEY")  # no default: refuse to start without one
if "CHANGE-ME" in SECRET_KEY.upper():
    raise ImproperlyConfigured("SECRET_KEY is still the example's placeholder: set 50+ random characters.")
# Required too: unset, base.py's development defaults would keep patients' data in a SQLite
# file inside the container, the broker on its disk, and the throttles in one process.
env_str("DATABASE_URL")
env_str("REDIS_URL")
DEBUG = False

# TLS ends at nginx (or the Ingress), which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# Probes and scrapes come over plain HTTP from inside the cluster, not from browsers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
USE_X_FORWARDED_HOST = False
# Demo accounts have published passwords: `seed_demo` refuses to run here.
DEMO_SEED_ALLOWED = False

# Behind nginx: Django authorizes, nginx streams the bytes (diagnostics/media.py).
PROTECTED_MEDIA_ACCEL_PREFIX = env_str("PROTECTED_MEDIA_ACCEL_PREFIX", "/_protected")
PROTECTED_MEDIA_S3_URL_SECONDS = env_int("PROTECTED_MEDIA_S3_URL_SECONDS", 60)

# Media storage: the local filesystem (one server, or a shared volume) or a private
# S3-compatible bucket (AWS, MinIO, Ceph...). Objects are never public: every read goes
# through the tenant gate and a short-lived signed URL fetched by nginx.
STORAGE_BACKEND = env_str("STORAGE_BACKEND", "filesystem")
if STORAGE_BACKEND == "s3":
    STORAGES = {
        **STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": env_str("S3_BUCKET"),
                "endpoint_url": env_str("S3_ENDPOINT_URL", "") or None,
                "region_name": env_str("S3_REGION", "") or None,
                "access_key": env_str("S3_ACCESS_KEY_ID", "") or None,
                "secret_key": env_str("S3_SECRET_ACCESS_KEY", "") or None,
                "default_acl": "private",
                "querystring_auth": True,
                "querystring_expire": PROTECTED_MEDIA_S3_URL_SECONDS,
                "file_overwrite": False,
                "object_parameters": {"ServerSideEncryption": env_str("S3_SERVER_SIDE_ENCRYPTION", "AES256")},
                "addressing_style": env_str("S3_ADDRESSING_STYLE", "path"),
                "signature_version": "s3v4",
            },
        },
    }
elif STORAGE_BACKEND != "filesystem":
    raise ImproperlyConfigured(f"STORAGE_BACKEND must be 'filesystem' or 's3', not {STORAGE_BACKEND!r}.")

# Static files are collected into STATIC_ROOT at image build time and served by nginx;
# the manifest gives them hashed names so they can be cached for a year.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}


def own_addresses() -> list[str]:
    """The machine's own addresses: Docker's healthcheck asks 127.0.0.1, and Prometheus
    scrapes each web container by its IP (Compose's DNS discovery). Django answered both
    400 for their Host header, so the web container never became healthy."""
    try:
        addresses = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        addresses = []
    return ["127.0.0.1", "localhost", "[::1]", *addresses]


# Required: the public host name(s), e.g. pleura.hospital.example.
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required: the public host name(s), comma separated.")
ALLOWED_HOSTS += [address for address in own_addresses() if address not in ALLOWED_HOSTS]

# JSON lines for the log shipper; "plain" is accepted for a quick look on a console.
LOG_FORMAT = env_str("LOG_FORMAT", "json").lower()
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'plain', not {LOG_FORMAT!r}.")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT
