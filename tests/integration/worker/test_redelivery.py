"""Exactly-once under at-least-once delivery: killed pool processes (SPEC 5, 6; issue 4).

Each test runs its own worker, since it kills or crashes the worker's pool processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from graftq import App, Job
from graftq.devserver import RedisServer
from tests.apps.school import Counter
from tests.entities import put_counter
from tests.integration.worker.conftest import FAULTY, Node, running
from tests.processes import (
    Proc,
    ancestor_among,
    identify,
    kill,
    lives,
    read_pid,
    read_proc,
    wait_until,
)


def received(node: Node, job_id: str) -> int:
    """How often the worker's main process received the job's message."""
    return node.proc.log().count(f"[{job_id}] received")


def kill_the_pool_process_running(node: Node, body: Proc) -> None:
    """SIGKILL the node's pool process whose isolated child is `body` (while it is held).

    The child is the pool process's grandchild (through its zygote) or its child.
    """
    pool_pid = ancestor_among(body.pid, node.proc.pool_pids())
    assert pool_pid is not None
    pool_process = identify(pool_pid)
    assert pool_process is not None and lives(body)
    assert kill(pool_process)
    wait_until(lambda: not lives(body), 30, f"isolated child {body} died with its parent")


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
    node = Node("killed-held")
    gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        job = app.submit("held", {"gate": str(gate), "pid_file": str(pid_file)})
        try:
            first = read_proc(pid_file)  # held until the gate opens: the kill lands mid-run
            pid_file.unlink()
            kill_the_pool_process_running(node, first)
        finally:
            gate.touch()

        assert job.get(timeout=60) == 1
        assert received(node, job.id) == 2  # redelivered, not merely finished
        assert read_pid(pid_file) != first.pid  # the second delivery ran the body again
        run = app.entities.execution(job.id)
        assert run is not None and run.status == "SUCCESS" and run.worker == node.node


def test_killed_pool_process_increment_commits_exactly_once(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    node = Node("killed-increment")
    gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        counter = put_counter(app.entities)
        data = {"counter": f"@{counter.lineage_id}", "gate": str(gate), "pid_file": str(pid_file)}
        job = app.submit("held_increment", data)
        try:
            kill_the_pool_process_running(node, read_proc(pid_file))
        finally:
            gate.touch()

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
        counter = put_counter(app.entities)
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
        wait_until(lambda: "WorkerLostError" in node.proc.log(), 60, "the worker saw the crash")
        assert (tmp_path / "crashed").exists()
        # Celery acks when it finds the stored SUCCESS; should it redeliver instead, wait
        # for that delivery to finish too, so a second commit could not be missed.
        if received(node, job.id) > 1:

            def succeeded_twice() -> bool:
                return node.proc.log().count(f"[{job.id}] succeeded in") == 2

            wait_until(succeeded_twice, 60, "the redelivery finished too")
        assert app.submit("increment", {"counter": f"@{counter.lineage_id}"}).get(60).value == 2
        assert job.status == "SUCCESS"
        versions = app.entities.history(counter.lineage_id)
        assert [version.derived_from for version in versions].count(job.id) == 1
        assert len(versions) == 3
