"""Session-wide private redis-server; every test gets a clean store database.

The store lives in db 0 (flushed before each test); Celery's broker and result
backend live in db 1, which is never flushed while workers may be connected
(kombu caches queue bindings per connection).

Every test outside tests/unit (tests/integration, tests/docs, ...) is marked
`integration` here, by directory, so `pytest -m "not integration"` is the fast unit
run; a unit test that asks for the Redis server is refused at collection, which keeps
that run free of Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from graftq import App
from graftq.devserver import RedisServer
from tests.apps.school import make_app

UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.integration)
        elif "redis_server" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(
                f"{item.nodeid} uses the Redis server: only tests outside {UNIT} may"
            )


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


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    """A client of the broker's database (db 1): queues are lists named after the queue."""
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_school(
    redis_url: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., App]:
    """Build a `tests.apps.school` App (or `make()`'s), configured as a user would: by
    GRAFTQ_* variables.

    Store on db 0 and broker/results on db 1 of the session's server, unless
    `store_url`/`broker` name another (a private server a test restarts). Jobs go
    to `queue` by default. `signing_key` None means no GRAFTQ_SIGNING_KEY at all.
    """

    def build(
        queue: str | None = None,
        *,
        signing_key: str | None = None,
        store_url: str | None = None,
        broker: str | None = None,
        make: Callable[[], App] = make_app,
    ) -> App:
        results = broker or broker_url
        env = {
            "GRAFTQ_REDIS_URL": store_url or redis_url,
            "GRAFTQ_BROKER_URL": results,
            "GRAFTQ_RESULT_BACKEND": results,
            "GRAFTQ_SIGNING_KEY": signing_key,
            "GRAFTQ_KEY_PREFIX": None,
        }
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        app = make()
        if queue is not None:
            app.celery.conf.task_default_queue = queue
        return app

    return build
