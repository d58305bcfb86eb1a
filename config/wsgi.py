from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

application = get_wsgi_application()


def _import_what_requests_use() -> None:
    """Do the importing of a first request while the server process starts.

    Each gunicorn process (and each one that replaces it after `max_requests`) would
    otherwise import the views, the Redis client (when the cache is Redis) and Celery's
    publishing code during its first request: 0.2 s on the 2-core VM, and 1.36 to 1.61 s
    to answer the first idle upload each process served on the lent GPU machine. Nothing
    here connects to the database, the cache or the broker: connections are still made
    when first used.
    """
    from django.conf import settings
    from django.urls import get_resolver

    from config.celery import app as celery_app

    if settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        import redis  # noqa: F401 - Django's Redis cache imports it on first use
    get_resolver().url_patterns  # noqa: B018 - the property imports the URLconf and every view
    celery_app.backend  # noqa: B018 - the property imports the (disabled) result backend
    with celery_app.connection_for_write() as connection:
        connection.transport  # noqa: B018 - resolving the transport imports it; nothing connects


_import_what_requests_use()
