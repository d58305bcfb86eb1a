"""Production: every secret comes from the environment, nothing insecure by default."""

from __future__ import annotations

from config.settings.base import *  # noqa: F403
from config.settings.env import env_bool, env_int, env_str

SECRET_KEY = env_str("SECRET_KEY")  # no default: refuse to start without one
DEBUG = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
