"""Django's Redis cache backend, with one redis-py client per connection pool."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


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
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _ClientPerPool
