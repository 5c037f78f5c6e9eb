"""A job writes its Celery states in its own round trips to the store (issue 9).

With the result backend on the store's Redis (the default: no GRAFTQ_RESULT_BACKEND),
the job's first read also stores its STARTED, and the MULTI...EXEC that commits it its
SUCCESS; Celery's own writes of both, two round trips each, are left out. Everything
a Celery client sees stays as Celery writes it. (The rest of the suite keeps results
on db 1, where Celery stores them itself.)
"""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celery
import celery.result
import redis
from celery import states
from celery.app.task import Context

from graftq import App
from graftq.registry.store import Announcement
from graftq.worker.task import run_job
from tests.apps.school import Counter
from tests.entities import put_counter
from tests.integration.worker.conftest import Node, running
from tests.integration.worker.test_redelivery import (
    assert_incremented_once,
    kill_the_pool_process_running,
    received,
)
from tests.processes import read_pid, read_proc


def delivery(
    app: App, name: str, input_data: dict[str, Any], task_id: str | None = None
) -> Context:
    """The request a worker's pool process gives a task for one delivery of a job."""
    return Context(
        id=task_id or str(uuid.uuid4()),
        task=f"graftq.{name}",
        args=[input_data],
        kwargs={},
        hostname="w1@test",
        delivery_info={"routing_key": "jobs"},
        retries=0,
    )


def celery_writes() -> contextlib.AbstractContextManager[None]:
    """Where Celery's own store runs here (in a worker it warns quietly): it calls
    redis-py's deprecated ``setex``."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", "Call to deprecated setex", DeprecationWarning)
    return stack


def meta(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, f"no Celery result for {task_id}"
    return dict(json.loads(raw))


def test_the_commit_stores_celerys_result_and_celery_then_writes_nothing(
    make_school: Callable[..., App], redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_school(broker=redis_url)  # results on the store's Redis
    counter = app.entities.put(Counter())
    data = {"counter": f"@{counter.lineage_id}"}
    request = delivery(app, "increment", data)
    info = app.callables["increment"]
    backend = app.celery.backend
    assert not app.celery.tasks["graftq.increment"].track_started  # the job writes STARTED
    listener = redis_client.pubsub()  # where a waiting AsyncResult hears of each state
    listener.subscribe(f"celery-task-meta-{request.id}")
    assert listener.get_message(timeout=5)["type"] == "subscribe"

    returned = run_job(app.entities, info, app.settings, request, data, result_backend=backend)

    execution = app.entities.execution(request.id)
    assert execution is not None and execution.status == "SUCCESS"
    assert returned == {"execution_id": request.id, "outputs": execution.outputs}
    stored = meta(redis_client, request.id)  # before Celery was told of the success
    assert stored["status"] == states.SUCCESS and stored["result"] == returned
    told = [json.loads(listener.get_message(timeout=5)["data"]) for _ in range(2)]
    assert [state["status"] for state in told] == [states.STARTED, states.SUCCESS]
    assert told[0]["result"]["hostname"] == "w1@test" and told[1] == stored
    listener.close()
    # the same document Celery's own store writes, field for field
    other = delivery(app, "increment", data)
    with celery_writes():
        backend.store_result(other.id, returned, states.SUCCESS, request=other)
    by_celery = meta(redis_client, other.id)
    assert set(stored) == set(by_celery)
    same = {"status", "result", "traceback", "children", "name", "args", "kwargs", "worker"}
    assert {k: stored[k] for k in same} == {k: by_celery[k] for k in same}
    assert stored["queue"] == by_celery["queue"] == "jobs" and stored["task_id"] == request.id
    assert 0 < redis_client.ttl(f"celery-task-meta-{request.id}") <= backend.expires

    # What Celery's tracer does next writes nothing: the marker below stays.
    redis_client.set(f"celery-task-meta-{request.id}", json.dumps({"status": "MARKER"}))
    with celery_writes():
        backend.mark_as_done(request.id, returned, request=request)
    assert meta(redis_client, request.id) == {"status": "MARKER"}


def test_the_first_read_announces_a_state_unless_the_job_already_succeeded(
    make_school: Callable[..., App], redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_school(broker=redis_url)
    counter = app.entities.put(Counter())
    store, key = app.entities, f"celery-task-meta-{uuid.uuid4()}"
    listener = redis_client.pubsub()
    listener.subscribe(key)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    running = json.dumps({"status": "STARTED", "result": {"pid": 1}})
    snapshot = store.snapshot([counter.lineage_id], announce=Announcement(key, running, 60))
    assert snapshot.meaning == {str(counter.lineage_id): (str(counter.ecs_id), False)}
    assert redis_client.get(key) == running and 0 < redis_client.ttl(key) <= 60
    assert listener.get_message(timeout=5)["data"] == running  # published, as Celery does
    done = json.dumps({"status": "SUCCESS", "result": 1})
    redis_client.set(key, done)
    store.snapshot([], announce=Announcement(key, running))  # e.g. a late redelivery
    assert redis_client.get(key) == done and redis_client.ttl(key) == -1
    listener.close()


def test_a_redelivered_job_is_stored_by_celery_as_before(
    make_school: Callable[..., App], redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_school(broker=redis_url)
    counter = app.entities.put(Counter())
    data = {"counter": f"@{counter.lineage_id}"}
    first = delivery(app, "increment", data)
    info, backend = app.callables["increment"], app.celery.backend
    returned = run_job(app.entities, info, app.settings, first, data, result_backend=backend)
    redis_client.delete(f"celery-task-meta-{first.id}")  # e.g. expired before the redelivery

    again = delivery(app, "increment", data, first.id)  # the same job, delivered again
    assert run_job(app.entities, info, app.settings, again, data, result_backend=backend) == (
        returned
    )
    assert app.entities.head(counter.lineage_id).value == 1  # nothing ran twice
    with celery_writes():
        backend.mark_as_done(again.id, returned, request=again)  # so Celery stores it
    assert meta(redis_client, again.id)["result"] == returned


def test_results_elsewhere_are_left_to_celery(
    make_school: Callable[..., App], redis_client: redis.Redis
) -> None:
    app = make_school()  # results on db 1, the store on db 0: no transaction spans both
    counter = app.entities.put(Counter())
    data = {"counter": f"@{counter.lineage_id}"}
    request = delivery(app, "increment", data)
    info, backend = app.callables["increment"], app.celery.backend
    assert app.celery.tasks["graftq.increment"].track_started
    run_job(app.entities, info, app.settings, request, data, result_backend=backend)
    assert redis_client.get(f"celery-task-meta-{request.id}") is None
    assert backend.get_task_meta(request.id)["status"] == states.PENDING  # Celery's to write


def test_a_worker_on_one_redis_answers_every_client(
    make_school: Callable[..., App], redis_url: str, tmp_path: Path
) -> None:
    """Store, broker and results on one URL, as a user who sets only GRAFTQ_REDIS_URL has."""
    node = Node("one-redis", env={"GRAFTQ_RESULT_BACKEND": ""})
    app = make_school(node.queue, broker=redis_url)
    with running(redis_url, redis_url, node):
        counter = app.entities.put(Counter())
        job = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
        assert job.get(timeout=60).value == 1 and job.status == states.SUCCESS
        # a job that runs says so, with the pool process and node as Celery would
        gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"
        held = app.submit("held", {"gate": str(gate), "pid_file": str(pid_file)})
        read_pid(pid_file)
        assert held.status == states.STARTED
        told = celery.result.AsyncResult(held.id, app=app.celery).info
        assert told["hostname"] == node.node and told["pid"] in node.proc.pool_pids()
        gate.touch()
        assert held.get(timeout=60) > 0 and held.status == states.SUCCESS
        # a plain Celery client, from another program, waits on the same result
        plain = celery.Celery("plain", broker=redis_url, backend=redis_url)
        plain.conf.task_default_queue = node.queue
        other = plain.send_task("graftq.increment", args=[{"counter": f"@{counter.lineage_id}"}])
        result = other.get(timeout=60)
        assert set(result) == {"execution_id", "outputs"} and result["execution_id"] == other.id
        assert app.entities.head(counter.lineage_id).value == 2
        # a failure is Celery's to store, as before
        failed = app.submit("fail", {"message": "boom"})
        try:
            failed.get(timeout=60)
        except ValueError as exc:
            assert "boom" in str(exc)
        else:
            raise AssertionError("the failing job returned")
        assert failed.status == states.FAILURE


def test_a_job_killed_mid_run_ends_once_with_celerys_result(
    make_school: Callable[..., App], redis_url: str, tmp_path: Path
) -> None:
    """The redelivery tells STARTED again, commits once and stores the one SUCCESS."""
    node = Node("one-redis-killed", env={"GRAFTQ_RESULT_BACKEND": ""})
    app = make_school(node.queue, broker=redis_url)
    gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"
    with running(redis_url, redis_url, node):
        counter = put_counter(app.entities)
        data = {"counter": f"@{counter.lineage_id}", "gate": str(gate), "pid_file": str(pid_file)}
        job = app.submit("held_increment", data)
        try:
            body = read_proc(pid_file)
            assert job.status == states.STARTED
            kill_the_pool_process_running(node, body)
        finally:
            gate.touch()

        assert job.get(timeout=60).value == 1 and job.status == states.SUCCESS
        assert received(node, job.id) == 2
        assert_incremented_once(app, counter, job.id)
