"""Faults under real work: killed workers, killed bodies, a killed Redis (issue 10).

Each test ends with the consistency checker (conftest.py): nothing half-written,
no execution committed twice, no acknowledged version lost.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter as Tally_
from collections.abc import Callable

import pytest
import redis

from graftq import App, GraftError, IsolationError
from graftq.devserver import RedisServer
from tests.apps.school import Counter
from tests.integration.worker.conftest import Node, new_queue, running
from tests.integration.worker.helpers import alive, chain_from_head, wait_until
from tests.processes import running_calls
from tests.reliability.conftest import RELIABLE, Tally


def broker_of(server: RedisServer) -> str:
    return f"redis://127.0.0.1:{server.port}/1"


def body_running(node: Node) -> tuple[int, int]:
    """(pool process, isolated child) of the job running on `node`."""
    found: list[tuple[int, int]] = []

    def running_body() -> bool:
        found[:] = [(p, c.pid) for p in node.proc.pool_pids() for c in running_calls(p)]
        return bool(found)

    wait_until(running_body, 20, f"a job body running on {node.name}")
    return found[0]


def assert_one_increment(app: App, counter: Counter, job_id: str) -> None:
    versions = app.entities.history(counter.lineage_id)
    assert [v.value for v in versions] == [0, 1]  # type: ignore[attr-defined]
    assert versions[1].derived_from == job_id


def test_worker_main_killed_mid_job_commits_exactly_once(
    durable_redis: RedisServer, producer: Callable[[str], App], tally: Tally
) -> None:
    env = {"GRAFTQ_VISIBILITY_TIMEOUT": "2", "GRAFTQ_TEST_INCREMENT_PAUSE": "2"}
    queue = new_queue()
    first = Node("main-killed", app_path=RELIABLE, env=env, concurrency=1, queue=queue)
    second = Node("successor", app_path=RELIABLE, env=env, concurrency=1, queue=queue)
    app = producer(queue)
    with running(durable_redis.url, broker_of(durable_redis), first):
        counter = app.entities.put(Counter(value=0))
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        body_running(first)
        assert first.proc.pid is not None
        os.kill(first.proc.pid, signal.SIGKILL)  # the main process: acks and results die with it
        tally.faults += 1
        with running(durable_redis.url, broker_of(durable_redis), second):
            # Redelivered after the visibility timeout to the successor, which finds the
            # commit already made (or makes it) and answers from the record.
            assert job.get(timeout=90).value == 1
            tally.jobs += 1
    assert_one_increment(app, counter, job.id)


def test_pool_process_killed_mid_job_commits_exactly_once(
    durable_redis: RedisServer, producer: Callable[[str], App], tally: Tally
) -> None:
    node = Node("pool-killed", app_path=RELIABLE, env={"GRAFTQ_TEST_INCREMENT_PAUSE": "2"})
    with running(durable_redis.url, broker_of(durable_redis), node):
        app = producer(node.queue)
        counter = app.entities.put(Counter(value=0))
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        pool_process, child = body_running(node)
        os.kill(pool_process, signal.SIGKILL)
        tally.faults += 1
        wait_until(lambda: not alive(child), 10, "the isolated child died with its pool process")
        assert job.get(timeout=60).value == 1
        tally.jobs += 1
    assert_one_increment(app, counter, job.id)


def test_killed_body_fails_its_job_commits_nothing_and_the_worker_serves_on(
    durable_redis: RedisServer, producer: Callable[[str], App], tally: Tally
) -> None:
    node = Node("body-killed", app_path=RELIABLE, env={"GRAFTQ_TEST_INCREMENT_PAUSE": "2"})
    with running(durable_redis.url, broker_of(durable_redis), node):
        app = producer(node.queue)
        counter = app.entities.put(Counter(value=0))
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        _, child = body_running(node)
        os.kill(child, signal.SIGKILL)
        tally.faults += 1
        with pytest.raises(IsolationError, match="SIGKILL"):
            job.get(timeout=60)
        assert len(app.entities.history(counter.lineage_id)) == 1
        record = app.entities.execution(job.id)
        assert record is not None and record.status == "FAILURE"
        again = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        assert again.get(timeout=60).value == 1
        tally.jobs += 2


def test_redis_killed_under_a_stream_of_commits_loses_no_acknowledged_commit(
    durable_redis: RedisServer, producer: Callable[[str], App], tally: Tally
) -> None:
    app = producer(new_queue())
    counters = [app.entities.put(Counter(value=0)) for _ in range(2)]
    acknowledged: list[tuple[Counter, Counter]] = []  # (lineage's first version, committed)
    refused: Tally_[str] = Tally_()
    stop = threading.Event()

    def stream(counter: Counter) -> None:
        while not stop.is_set():
            try:
                done = app.execute("increment", {"counter": f"@{counter.lineage_id}"})
            except (GraftError, redis.RedisError) as exc:  # Redis is down: not acknowledged
                refused[type(exc).__name__] += 1
                stop.wait(0.05)
                continue
            acknowledged.append((counter, done))

    threads = [threading.Thread(target=stream, args=(c,), daemon=True) for c in counters]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            target = len(acknowledged) + 10
            wait_until(lambda n=target: len(acknowledged) >= n, 120, f"{target} commits")
            durable_redis.crash()
            tally.faults += 1
            durable_redis.start()
        target = len(acknowledged) + 10
        wait_until(lambda: len(acknowledged) >= target, 120, f"{target} commits after the faults")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    tally.jobs += len(acknowledged)
    print(f"commits acknowledged: {len(acknowledged)}; refused while down: {dict(refused)}")

    store = app.entities
    for _, done in acknowledged:
        try:
            assert store.get(done.ecs_id).value == done.value  # type: ignore[attr-defined]
        except GraftError:
            tally.lost.append(str(done.ecs_id))
    for counter in counters:
        versions = store.history(counter.lineage_id)
        chain = chain_from_head(versions, store.head(counter.lineage_id))
        assert [v.value for v in chain] == list(range(len(chain)))  # type: ignore[attr-defined]
        assert len(chain) == len(versions)  # execute by lineage never branches
