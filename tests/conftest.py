"""Session-wide private redis-server; every test gets a clean store database.

The store lives in db 0 (flushed before each test); Celery's broker and result
backend live in db 1, which is never flushed while workers may be connected
(kombu caches queue bindings per connection).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from graftq.devserver import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def broker_url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/1"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
