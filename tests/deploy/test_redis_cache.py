"""The Redis cache backend the settings name: Django's, with one client per connection pool;
and the request counter the API throttle keeps in it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache.backends.locmem import LocMemCache

from config.cache import SharedClientRedisCache, count_request
from tests.conftest import delete_redis_cache_keys


@pytest.fixture
def redis_cache(redis_url):
    prefix = f"test-{uuid.uuid4().hex}"
    cache = SharedClientRedisCache(redis_url, {"KEY_PREFIX": prefix})
    yield cache
    delete_redis_cache_keys(cache, f"{prefix}:*")  # only this test's keys


def test_every_operation_goes_through_the_same_client(redis_cache):
    first = redis_cache._cache.get_client(write=True)

    redis_cache.set("throttle", [1.0, 2.0], 30)

    assert redis_cache._cache.get_client() is first
    assert redis_cache._cache.get_client(write=True) is first
    assert redis_cache.get("throttle") == [1.0, 2.0]


def test_threads_sharing_the_client_each_read_their_own_keys(redis_cache):
    def write_then_read(number: int) -> int:
        redis_cache.set(f"key-{number}", number, 30)
        return redis_cache.get(f"key-{number}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        read = list(pool.map(write_then_read, range(64)))

    assert read == list(range(64))


def test_add_keeps_the_first_value_as_djangos_backend_does(redis_cache):
    assert redis_cache.add("wake-up", 1, 30) is True
    assert redis_cache.add("wake-up", 2, 30) is False
    assert redis_cache.get("wake-up") == 1


def test_the_default_cache_is_it_when_redis_is_configured(redis_url):
    from django.core.cache import caches

    assert type(caches["default"]) is SharedClientRedisCache


def test_a_counter_starts_at_one_reads_back_as_a_number_and_expires(redis_cache):
    counts = [count_request(redis_cache, "requests:window-1", 61) for _ in range(3)]

    client = redis_cache._cache.get_client()
    assert counts == [1, 2, 3]
    assert redis_cache.get("requests:window-1") == 3
    assert 59 <= client.ttl(redis_cache.make_key("requests:window-1")) <= 61


def test_a_counter_on_a_local_memory_cache_counts_the_same():
    cache = LocMemCache(f"test-{uuid.uuid4().hex}", {})

    assert [count_request(cache, "requests:window-1", 61) for _ in range(3)] == [1, 2, 3]
