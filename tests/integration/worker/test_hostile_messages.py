"""No message can kill a worker (issue 10 item 1; SPEC 4 and 7).

A raw `send_task` nested 800 levels deep used to end the worker's main process
(RecursionError while billiard pickled the job for its pool) and, redelivered,
the next worker too. Now such a message, and one that does not decode, fails its
own job with InvalidInput (seen by `Job.get`), is dropped, and the worker serves on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from graftq import App, InvalidInput
from graftq.devserver import RedisServer
from graftq.tasks.bounds import MAX_DEPTH
from tests.apps.school import Student
from tests.integration.worker.conftest import Node, running
from tests.integration.worker.helpers import alive, wait_until

HOSTILE = "tests.apps.hostile:app"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.fixture(scope="module")
def hostile_worker(redis_server: RedisServer, broker_url: str) -> Iterator[Node]:
    node = Node(f"hostile-{uuid.uuid4().hex[:6]}", app_path=HOSTILE, concurrency=1)
    with running(redis_server.url, broker_url, node):
        yield node


@pytest.fixture
def app(client_app: Callable[..., App], hostile_worker: Node) -> App:
    from tests.apps.hostile import make_app

    producer = client_app(hostile_worker.queue)
    hostile = make_app()
    hostile.celery.conf.update(producer.celery.conf)  # the same broker, backend and queue
    return hostile


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


def assert_serving(app: App, node: Node, main_pid: int) -> None:
    assert alive(main_pid) and node.proc.pid == main_pid
    assert app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}).get(timeout=30) == 3.0


def assert_dropped(broker: redis.Redis, node: Node) -> None:
    """The message is neither queued nor waiting unacknowledged (the job failed first)."""

    def gone() -> bool:
        unacked = broker.hgetall("unacked").values()
        return broker.llen(node.queue) == 0 and not [m for m in unacked if node.queue.encode() in m]

    wait_until(gone, 10, f"the message left queue {node.queue} and the unacked set")


def send_raw(
    app: App,
    queue: str,
    body: str,
    *,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
    task: str = "graftq.deep",
) -> str:
    """Publish a message the way a hostile client could: headers and body as given."""
    task_id = str(uuid.uuid4())
    with app.celery.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            routing_key=queue,
            exchange="",
            content_type=content_type,
            content_encoding="utf-8",
            headers={"task": task, "id": task_id, **(headers or {})},
        )
    return task_id


def test_deep_raw_send_task_fails_its_job_and_the_worker_keeps_serving(
    app: App, hostile_worker: Node, broker: redis.Redis
) -> None:
    main_pid = hostile_worker.proc.pid
    assert main_pid is not None
    result = app.celery.send_task("graftq.deep", args=[{"value": nested(800)}])
    job = app.job(result.id, "deep")

    with pytest.raises(InvalidInput, match="deeper"):
        job.get(timeout=30)

    assert job.status == "FAILURE"
    assert_dropped(broker, hostile_worker)
    assert_serving(app, hostile_worker, main_pid)
    assert app.entities.execution(job.id) is None  # nothing was written for it


def test_deepest_allowed_input_runs_on_the_worker(app: App) -> None:
    assert app.submit("deep", {"value": nested(MAX_DEPTH)}).get(timeout=30) == 1
    by_keywords = app.celery.send_task("graftq.deep", kwargs={"value": nested(MAX_DEPTH)})
    assert app.job(by_keywords.id, "deep").get(timeout=30) == 1


def test_input_one_level_too_deep_fails_on_the_worker_with_invalid_input(app: App) -> None:
    result = app.celery.send_task("graftq.deep", args=[{"value": nested(MAX_DEPTH + 1)}])
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH}"):
        app.job(result.id, "deep").get(timeout=30)


RAW_MESSAGES = {
    "not json": ("{nope", "application/json", {}),
    "json too deep to decode": ("[" * 100_000 + "]" * 100_000, "application/json", {}),
    "not a task body": ('"hello"', "application/json", {}),
    "a bare number": ("1", "application/json", {}),
    "args not a list": ("[1, {}, {}]", "application/json", {}),
    "pickle": ("gASVAgAAAAAAAACMAJQu", "application/x-python-serialize", {}),
    "deep header": ("[[{}], {}, {}]", "application/json", {"x": nested(500)}),
    "kombu envelope of an unknown type": (
        '[[{"value": {"__type__": "nope", "__value__": 1}}], {}, {}]',
        "application/json",
        {},
    ),
    # JSON's escape for a lone surrogate decodes to a str no UTF-8 can hold: the body ran,
    # then writing its Execution record failed with pydantic's serialization error.
    "a lone surrogate": ('[[], {"value": {"name": "caf\\ud800"}}, {}]', "application/json", {}),
}


@pytest.mark.parametrize("what", list(RAW_MESSAGES))
def test_a_message_that_cannot_become_a_job_fails_it_and_is_dropped(
    app: App, hostile_worker: Node, broker: redis.Redis, what: str
) -> None:
    main_pid = hostile_worker.proc.pid
    assert main_pid is not None
    body, content_type, headers = RAW_MESSAGES[what]
    task_id = send_raw(app, hostile_worker.queue, body, content_type=content_type, headers=headers)

    with pytest.raises(InvalidInput):
        app.job(task_id, "deep").get(timeout=30)

    assert_dropped(broker, hostile_worker)
    assert_serving(app, hostile_worker, main_pid)


def test_submit_refuses_deep_input_and_enqueues_nothing(
    app: App, hostile_worker: Node, broker: redis.Redis
) -> None:
    for depth in (MAX_DEPTH + 1, 480, 2000):
        with pytest.raises(InvalidInput, match="deeper"):
            app.submit("deep", {"value": nested(depth)})
    assert broker.llen(hostile_worker.queue) == 0


@pytest.mark.parametrize(
    "value",
    [{1, 2}, b"raw", object(), "caf\udc80"],
    ids=["set", "bytes", "object", "lone-surrogate"],
)
def test_submit_refuses_what_json_cannot_carry_and_stores_nothing(
    app: App, hostile_worker: Node, broker: redis.Redis, redis_client: redis.Redis, value: Any
) -> None:
    for name in ("anything", "anything_object"):
        with pytest.raises(InvalidInput, match="'value'"):
            app.submit(name, {"value": value})
    with pytest.raises(InvalidInput, match="'extra'"):
        app.submit("enroll", {"student": Student(name="Ann", age=20), "extra": value})
    assert redis_client.dbsize() == 0  # the Student was not stored for a refused job
    assert broker.llen(hostile_worker.queue) == 0
