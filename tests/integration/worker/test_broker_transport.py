"""graftq's Redis broker transport (`graftq.worker.broker`) on a real redis-server.

kombu builds a new redis-py client for every publish, acknowledgement and event; each
build fills a table of reply parsers in Python, a fifth of a millisecond on a slow host,
paid twice per `submit` and four times per job in a worker's main process. The
transport builds one per connection pool, and a new one when kombu replaces the pool
(as it does when it reconnects), so messages still flow after that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graftq.settings import Settings
from graftq.worker.config import make_celery


@pytest.fixture
def channel(broker_url: str) -> Iterator[Any]:
    celery = make_celery("transport-test", Settings(redis_url=broker_url))
    with celery.connection_for_write() as connection:
        yield connection.default_channel
    celery.close()


def built_clients(channel: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every redis-py client the channel builds from now on."""
    built: list[Any] = []
    build = channel._create_client

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(client := build(*args, **kwargs))
        return client

    monkeypatch.setattr(channel, "_create_client", counting)
    return built


def test_publishing_builds_one_client_per_pool_and_survives_a_new_pool(
    channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"transport-{uuid.uuid4().hex[:8]}"
    built = built_clients(channel, monkeypatch)
    for i in range(5):
        channel._put(queue, {"body": i})
        channel._put_fanout("celeryev", {"body": i}, "")  # how events go out
    assert len(built) == 1, f"{len(built)} clients for 10 publishes"

    channel._disconnect_pools()  # what kombu does when the connection is lost
    channel._put(queue, {"body": 5})
    assert len(built) == 2 and built[1] is not built[0]
    assert [channel._get(queue)["body"] for _ in range(6)] == [0, 1, 2, 3, 4, 5]
