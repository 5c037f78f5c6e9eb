"""Exactly-once under at-least-once delivery: killed pool processes (SPEC 5, 6; issue 4).

Each test runs its own worker, since it kills or crashes the worker's pool processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from graftq import App
from graftq.devserver import RedisServer
from graftq.worker.job import Job
from tests.apps.school import Counter
from tests.integration.worker.conftest import FAULTY, Node, running
from tests.integration.worker.helpers import (
    alive,
    children_of,
    parent_of,
    read_pid,
    wait_until,
)


def received(node: Node, job_id: str) -> int:
    """How often the worker's main process received the job's message."""
    return node.proc.log().count(f"[{job_id}] received")


def assert_incremented_once(app: App, counter: Counter, job_id: str) -> None:
    store = app.entities
    head = store.head(counter.lineage_id)
    assert isinstance(head, Counter) and head.value == 1
    versions = store.history(counter.lineage_id)
    assert [version.ecs_id for version in versions] == [counter.ecs_id, head.ecs_id]
    assert head.parent_id == counter.ecs_id and head.derived_from == job_id
    run = store.execution(job_id)
    assert run is not None and run.status == "SUCCESS" and run.outputs == [str(head.ecs_id)]


def test_killed_pool_process_job_is_redelivered_and_its_child_dies(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    node = Node("killed-sleepy")
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        pid_file = tmp_path / "sleepy.pid"
        job = app.submit("sleepy", {"seconds": 3.0, "pid_file": str(pid_file)})
        child = read_pid(pid_file)
        pool_process = parent_of(child)
        assert pool_process in node.proc.pool_pids()
        pid_file.unlink()

        os.kill(pool_process, signal.SIGKILL)

        wait_until(lambda: not alive(child), 5, f"isolated child {child} died with its parent")
        assert job.get(timeout=60) == 1
        assert received(node, job.id) == 2  # redelivered, not merely finished
        assert read_pid(pid_file) != child  # the second delivery ran the body again
        run = app.entities.execution(job.id)
        assert run is not None and run.status == "SUCCESS" and run.worker == node.node


def test_killed_pool_process_increment_commits_exactly_once(
    redis_server: RedisServer, broker_url: str, client_app: Callable[..., App]
) -> None:
    node = Node("killed-increment", env={"GRAFTQ_TEST_INCREMENT_PAUSE": "3"})
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        counter = app.entities.put(Counter(value=0))
        assert isinstance(counter, Counter)
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        busy: list[tuple[int, int]] = []

        def running_body() -> bool:
            busy[:] = [(p, c) for p in node.proc.pool_pids() for c in children_of(p)]
            return bool(busy)

        wait_until(running_body, 10, "a pool process running the isolated body")
        [(pool_process, child)] = busy

        os.kill(pool_process, signal.SIGKILL)

        wait_until(lambda: not alive(child), 5, f"isolated child {child} died with its parent")
        assert job.get(timeout=60).value == 1
        assert received(node, job.id) == 2
        assert_incremented_once(app, counter, job.id)


@contextlib.contextmanager
def crashing_increment(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    marker: Path,
    hook: str,
) -> Iterator[tuple[Node, App, Counter, Job]]:
    """A faulty worker whose pool process dies once at `hook`; one increment job through it."""
    node = Node(f"crash-{hook.lower()}", app_path=FAULTY, env={hook: str(marker)})
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        counter = app.entities.put(Counter(value=0))
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        assert job.get(timeout=60).value == 1
        yield node, app, counter, job


def test_crash_after_commit_before_ack_does_not_commit_again(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    hook = "GRAFTQ_TEST_CRASH_AFTER_COMMIT"
    with crashing_increment(redis_server, broker_url, client_app, tmp_path / "crashed", hook) as (
        node,
        app,
        counter,
        job,
    ):
        assert received(node, job.id) == 2  # the job really came back after the commit
        assert_incremented_once(app, counter, job.id)
        # The worker still serves: the next job commits on top.
        assert app.submit("increment", {"counter": f"@{counter.lineage_id}"}).get(60).value == 2


def test_crash_after_result_stored_before_ack_does_not_commit_again(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    hook = "GRAFTQ_TEST_CRASH_AFTER_RESULT"
    with crashing_increment(redis_server, broker_url, client_app, tmp_path / "crashed", hook) as (
        node,
        app,
        counter,
        job,
    ):
        wait_until(lambda: "WorkerLostError" in node.proc.log(), 15, "the worker saw the crash")
        assert (tmp_path / "crashed").exists()
        # Celery acks when it finds the stored SUCCESS; should it redeliver instead, wait
        # for that delivery to finish too, so a second commit could not be missed.
        if received(node, job.id) > 1:
            wait_until(lambda: node.proc.log().count(f"[{job.id}] succeeded in") == 2, 30, "")
        assert app.submit("increment", {"counter": f"@{counter.lineage_id}"}).get(60).value == 2
        assert job.status == "SUCCESS"
        versions = app.entities.history(counter.lineage_id)
        assert [version.derived_from for version in versions].count(job.id) == 1
        assert len(versions) == 3
