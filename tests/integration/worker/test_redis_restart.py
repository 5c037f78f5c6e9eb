"""A Redis restart under a running worker loses nothing and stops nothing (AOF on)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from graftq import App
from graftq.devserver import RedisServer
from tests.entities import put_counter
from tests.integration.worker.conftest import Node, running
from tests.processes import alive, lives, read_proc, wait_until
from tests.redis_state import restart


def test_worker_keeps_serving_across_a_redis_restart(client_app: Callable[..., App]) -> None:
    with RedisServer(appendonly=True) as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        node = Node("restart")
        with running(server.url, broker, node):
            app = client_app(node.queue, store_url=server.url, broker=broker)
            counter = put_counter(app.entities)
            ref = {"counter": f"@{counter.lineage_id}"}
            assert app.submit("increment", ref).get(timeout=30).value == 1

            restart(server)  # same port, data back from the append-only file

            # The producer's and the worker's connections were cut; both reconnect.
            assert app.submit("increment", ref).get(timeout=60).value == 2
            history = app.entities.history(counter.lineage_id)
            assert [version.value for version in history] == [0, 1, 2]


def test_a_restart_while_a_job_runs_leaves_the_worker_serving(
    client_app: Callable[..., App], tmp_path: Path
) -> None:
    """A job delivered and not yet acknowledged when Redis goes away (acks are late):
    Celery closes the broker channel, kombu restores the unacknowledged message through
    a connection it has already let go of, and the worker must survive that."""
    with RedisServer(appendonly=True) as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        node = Node("restart-busy")
        with running(server.url, broker, node):
            app = client_app(node.queue, store_url=server.url, broker=broker)
            gate, pid_file = tmp_path / "gate", tmp_path / "pid"
            held = app.submit("held", {"gate": str(gate), "pid_file": str(pid_file)})
            wait_until(pid_file.exists, 30, "the held job runs")
            restart(server)
            gate.touch()
            assert held.get(timeout=60) == 1
            counter = put_counter(app.entities)
            assert (
                app.submit("increment", {"counter": f"@{counter.lineage_id}"}).get(timeout=60).value
                == 1
            )
            assert node.proc.pid is not None and alive(node.proc.pid)


def test_a_restart_while_a_job_commits_commits_it_once_when_redis_is_back(
    client_app: Callable[..., App], tmp_path: Path
) -> None:
    """Redis stops as the body finishes (the commit is refused at once) and is back in a
    moment: the worker tries the commit again within its connect timeout, so the job
    succeeds, committed once — it used to fail with `Unreachable` and leave no record."""
    with RedisServer(appendonly=True, fsync="always") as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        node = Node("restart-commit", env={"GRAFTQ_CONNECT_TIMEOUT": "30"})
        with running(server.url, broker, node):
            app = client_app(node.queue, store_url=server.url, broker=broker)
            counter, job, gate, pid_file = submit_held(app, tmp_path)
            body = read_proc(pid_file)  # the held body runs
            server.stop(keep_data=True)
            gate.touch()
            wait_until(lambda: not lives(body), 30, "the body finished")
            wait_until(
                lambda: any(said in node.proc.log() for said in ("commit again", "FAILURE")),
                30,
                "the worker tried to commit",
            )
            restart(server)

            assert job.get(timeout=60).value == 1
            record = app.entities.execution(job.id)
            assert record is not None and record.status == "SUCCESS", record
            history = app.entities.history(counter.lineage_id)
            assert [version.value for version in history] == [0, 1]


@pytest.mark.parametrize("wait", ["get", "aget"])
def test_a_job_waited_on_across_a_redis_restart_is_answered(
    client_app: Callable[..., App], tmp_path: Path, wait: str
) -> None:
    """`Job.get`/`aget` already waiting when Redis restarts: the worker rides the restart
    out and commits, and so must the wait — it raised `Unreachable` ("Connection
    refused") the moment the server was down, though it was back within a second and
    the job succeeded. A server that stays away still fails the wait within the
    connect timeout (tests/integration/worker/test_unreachable.py)."""
    with RedisServer(appendonly=True) as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        node = Node(f"restart-wait-{wait}")
        with running(server.url, broker, node):
            app = client_app(node.queue, store_url=server.url, broker=broker)
            gate, pid_file = tmp_path / "gate", tmp_path / "pid"
            job = app.submit("held", {"gate": str(gate), "pid_file": str(pid_file)})
            answers: list[object] = []

            def waiter() -> None:
                try:
                    answers.append(
                        job.get(timeout=60) if wait == "get" else asyncio.run(job.aget(60))
                    )
                except Exception as exc:  # what the test reports
                    answers.append(exc)

            waiting = threading.Thread(target=waiter)
            waiting.start()
            read_proc(pid_file)  # the held body runs: the waiter waits on it
            with redis.Redis.from_url(broker) as watcher:  # and is subscribed, or polling
                channel = f"celery-task-meta-{job.id}"
                wait_until(
                    lambda: wait == "aget" or watcher.pubsub_numsub(channel)[0][1] > 0,
                    30,
                    "the waiter waits",
                )
            restart(server)
            gate.touch()
            waiting.join(90)
            assert answers == [1]


def test_a_commit_that_outlasts_the_connect_timeout_fails_the_job_with_unreachable(
    client_app: Callable[..., App], tmp_path: Path
) -> None:
    """Redis stays away longer than the worker's connect timeout while a job commits: the
    job fails with `Unreachable` (a GraftError naming the URL) — Celery stored the
    redis-py ConnectionError its own failed write of that failure met instead, so `Job.get`
    raised a bare ``redis.exceptions.ConnectionError: ... Connection refused`` once the
    server was back. Whether the message is then delivered again or not, nothing is
    committed twice."""
    with RedisServer(appendonly=True, fsync="always") as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        node = Node("restart-late", env={"GRAFTQ_CONNECT_TIMEOUT": "2"}, concurrency=1)
        with running(server.url, broker, node):
            app = client_app(node.queue, store_url=server.url, broker=broker)
            counter, job, gate, pid_file = submit_held(app, tmp_path)
            body = read_proc(pid_file)
            server.stop(keep_data=True)
            gate.touch()
            wait_until(lambda: not lives(body), 30, "the body finished")
            wait_until(lambda: f"[{job.id}] FAILURE" in node.proc.log(), 30, "the commit gave up")
            server.start()
            ended: list[dict[str, Any]] = []  # what Celery keeps of the job once it ended
            with redis.Redis.from_url(broker) as results:
                key = f"celery-task-meta-{job.id}"

                def stored_end() -> bool:
                    state = json.loads(results.get(key) or "{}")
                    if state.get("status") in ("SUCCESS", "FAILURE"):
                        ended.append(state)
                    return bool(ended)

                wait_until(stored_end, 60, "the job's end is stored")
            if ended[0]["status"] == "FAILURE":
                failure = ended[0]["result"]
                assert failure["exc_type"] == "Unreachable", failure
                assert server.url in str(failure["exc_message"]), failure
            history = app.entities.history(counter.lineage_id)
            assert [version.value for version in history] in ([0], [0, 1])


def submit_held(app: App, tmp_path: Path) -> tuple[Any, Any, Path, Path]:
    """A counter and a `held_increment` job on it: the body writes its pid to `pid_file`
    and waits for `gate` to exist."""
    counter = put_counter(app.entities)
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    job = app.submit(
        "held_increment",
        {"counter": f"@{counter.lineage_id}", "gate": str(gate), "pid_file": str(pid_file)},
    )
    return counter, job, gate, pid_file
