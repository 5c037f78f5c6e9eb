"""graftq's Redis broker transport (`graftq.worker.broker`) on a real redis-server.

kombu builds a new redis-py client for every publish, acknowledgement and event; each
build fills a table of reply parsers in Python, a fifth of a millisecond on a slow host,
paid twice per `submit` and four times per job in a worker's main process. The
transport builds one per connection pool, and a new one when kombu replaces the pool
(as it does when it reconnects), so messages still flow after that.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from graftq.devserver import find_redis_server
from graftq.settings import Settings
from graftq.worker.config import make_celery
from tests.apps.school import Student, make_app
from tests.processes import wait_until


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


@pytest.fixture
def unix_socket_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server listening on a Unix socket only: the socket's path."""
    socket_path = str(tmp_path / "redis.sock")
    server = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", socket_path, "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(unix_socket_path=socket_path)
        wait_until(lambda: _answers(client), 10, "redis-server listens on its socket")
        client.close()
        yield socket_path
    finally:
        server.terminate()
        server.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_unix_socket_redis_url_is_also_the_broker_and_result_backend(
    unix_socket_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRAFTQ_REDIS_URL may name a Unix socket (``unix://PATH?db=N``, redis-py's form) and
    the broker and result backend default to it; Celery has no ``unix`` transport (it
    names the socket ``redis+socket://``), so `submit` raised KeyError 'No such
    transport: unix' and a worker could not start."""
    for name in ("BROKER_URL", "RESULT_BACKEND", "KEY_PREFIX"):
        monkeypatch.delenv(f"GRAFTQ_{name}", raising=False)
    monkeypatch.setenv("GRAFTQ_REDIS_URL", f"unix://{unix_socket_redis}?db=2")
    app = make_app()
    queue = f"transport-{uuid.uuid4().hex[:8]}"
    app.celery.conf.task_default_queue = queue
    try:
        student = app.entities.put(Student(name="Al", age=3))
        job = app.submit("birthday", {"student": f"@{student.lineage_id}"})
        assert job.status == "PENDING"
        server = redis.Redis(unix_socket_path=unix_socket_redis, db=2)
        assert server.llen(queue) == 1  # the store's database, as with a redis:// URL
        server.close()
    finally:
        app.entities.client.close()
        app.celery.close()
