"""Fault tests: each runs its own redis-server (AOF, fsync always) and its own workers.

After each test the consistency checker reads the whole store; any contradiction
(a half-written commit, a head or history naming a missing version, a version
committed twice by one execution) fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis

from graftq import App
from graftq.devserver import RedisServer
from tests.apps.reliable import make_app
from tests.reliability import consistency

RELIABLE = "tests.apps.reliable:app"


@dataclass
class Tally:
    """What a fault test did, printed at its end (shown with -s or on failure)."""

    faults: int = 0
    jobs: int = 0
    lost: list[str] = field(default_factory=list)


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    counts = Tally()
    yield counts
    print(
        f"\nreliability {request.node.name}: faults={counts.faults} jobs={counts.jobs} "
        f"versions lost={len(counts.lost)}"
    )


@pytest.fixture
def durable_redis(tally: Tally) -> Iterator[RedisServer]:
    """A private redis-server with every acknowledged write fsynced to its AOF."""
    with RedisServer(appendonly=True, fsync="always") as server:
        yield server
        client = redis.Redis.from_url(server.url)
        try:
            report = consistency.check(client)
            duplicates = consistency.duplicated_outputs(client)
        finally:
            client.close()
        print(f"consistency: {report.versions} versions, {report.executions} executions")
        assert report.problems == [], "\n".join(report.problems)
        assert duplicates == [], f"executions that committed twice: {duplicates}"
        assert tally.lost == [], f"acknowledged versions lost: {tally.lost}"


@pytest.fixture
def producer(durable_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], App]:
    """Apps on the durable server (store db 0, broker and results db 1), sending to `queue`."""

    def build(queue: str) -> App:
        broker = f"redis://127.0.0.1:{durable_redis.port}/1"
        monkeypatch.setenv("GRAFTQ_REDIS_URL", durable_redis.url)
        monkeypatch.setenv("GRAFTQ_BROKER_URL", broker)
        monkeypatch.setenv("GRAFTQ_RESULT_BACKEND", broker)
        app = make_app()
        app.celery.conf.task_default_queue = queue
        return app

    return build
