"""Django's Redis cache backend, with one redis-py client per connection pool."""

from __future__ import annotations

import functools

import redis
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from config.fail_fast import FailFast

# One per Redis location, shared by this process's threads (Django builds a cache object
# per thread).
unanswered: dict[str, FailFast] = {}


class _ClientPerPool(RedisCacheClient):
    """Django builds a new `redis.Redis` for every cache operation, and redis-py's
    constructor copies its table of some 170 response callbacks each time. On the 2-core
    VM a GET through a new client took 80 to 135 us longer than through a kept one, and
    every API upload makes three such operations (the throttle's read and write, the
    worker wake-up). A client holds no connection of its own (it borrows one from
    its pool for each command), so one client per pool serves every thread; redis-py
    documents clients as safe to share between threads.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))  # pools live as long as this object: ids are stable
        if client is None:
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))
        return client


class SharedClientRedisCache(RedisCache):
    # One round trip, atomic: the first increment of a counter sets its lifetime.
    _COUNT_SCRIPT = """
    local count = redis.call('INCR', KEYS[1])
    if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
    return count
    """

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _ClientPerPool
        self._count_script = None  # redis-py's Script: its digest, run through any client
        self.unanswered = unanswered.setdefault(str(server), FailFast())

    def count_request(self, key: str, seconds: int) -> int:
        """`count_request` on Redis: one command, a script run by its digest (INCR, and
        EXPIRE on the first count), cheaper than DRF's throttle's GET and SET of a
        pickled list."""
        client = self._cache.get_client(write=True)
        if self._count_script is None:
            self._count_script = client.register_script(self._COUNT_SCRIPT)  # no round trip
        return int(self._count_script(keys=[self.make_and_validate_key(key)], args=[seconds], client=client))


def _skipped_while_unanswered(method):
    """The cache's command, failing at once while Redis is skipped (config.fail_fast)."""

    @functools.wraps(method)
    def command(self, *args, **kwargs):
        if self.unanswered.skipping():
            raise redis.exceptions.ConnectionError("Redis did not answer a moment ago: not asked again yet")
        try:
            return method(self, *args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self.unanswered.failed()
            raise

    return command


for _name in (
    "add", "get", "set", "touch", "delete", "get_many", "has_key", "incr", "set_many", "delete_many", "clear",
    "count_request",
):  # fmt: skip
    setattr(SharedClientRedisCache, _name, _skipped_while_unanswered(getattr(SharedClientRedisCache, _name)))


def redis_cache_settings(url: str, timeout_seconds: float) -> dict:
    """CACHES["default"] on Redis. A Redis that hangs (a network partition, a stalled
    server) must not hang requests: every command gives up after `timeout_seconds`, and
    the rate limit and the wake-up record then go on without it."""
    return {
        "BACKEND": "config.cache.SharedClientRedisCache",
        "LOCATION": url,
        "OPTIONS": {"socket_connect_timeout": timeout_seconds, "socket_timeout": timeout_seconds},
    }


def count_request(cache, key: str, seconds: int) -> int:
    """Add one to the counter `key` and return the new count; a counter that does not
    exist starts at one and lives for `seconds`. Atomic on every backend: concurrent
    calls each get a different count.

    A backend with its own `count_request` (SharedClientRedisCache) does it in one round
    trip; it is reached through Django's `cache` proxy too. Others (LocMemCache for
    `make run`) use `add`, then `incr`.
    """
    if hasattr(cache, "count_request"):
        return cache.count_request(key, seconds)
    for _ in range(2):
        cache.add(key, 0, timeout=seconds)
        try:
            return cache.incr(key)
        except ValueError:  # it expired between the two calls: start it again
            continue
    raise RuntimeError(f"the counter {key!r} expires faster than it can be counted")
