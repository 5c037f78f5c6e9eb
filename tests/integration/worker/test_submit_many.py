"""`submit_many` / `asubmit_many` (SPEC section 5 "Running"): a batch resolved and
validated first — the references of the whole batch in O(1) round trips — then
enqueued in one go; a bad input names its index and nothing is enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest
import redis

import graftq
from graftq import App
from graftq.devserver import RedisServer
from tests.apps.school import Counter, Student
from tests.integration.worker.conftest import Node, new_queue


def queued(broker_url: str, queue: str) -> int:
    with redis.Redis.from_url(broker_url) as client:
        return int(client.llen(queue))


def counters(app: App, n: int) -> list[Counter]:
    return [app.entities.put(Counter(value=i)) for i in range(n)]


def test_a_batch_runs_every_job(shared_worker: Node, client_app: Callable[..., App]) -> None:
    app = client_app(shared_worker.queue)
    stored = counters(app, 12)
    inputs = [
        {"counter": f"@{c.lineage_id}" if n % 2 else f"@{c.ecs_id}"} for n, c in enumerate(stored)
    ]

    jobs = app.submit_many("increment", inputs)

    assert len({job.id for job in jobs}) == 12
    assert [job.get(timeout=60).value for job in jobs] == [c.value + 1 for c in stored]
    for job, counter in zip(jobs, stored, strict=True):
        run = app.entities.execution(job.id)
        assert run is not None and run.inputs == {"counter": str(counter.ecs_id)}


def test_asubmit_many_in_an_event_loop(shared_worker: Node, client_app: Callable[..., App]) -> None:
    app = client_app(shared_worker.queue)
    stored = counters(app, 3)

    async def main() -> list[Any]:
        jobs = await app.asubmit_many("increment", [{"counter": f"@{c.ecs_id}"} for c in stored])
        return [await job.aget(timeout=60) for job in jobs]

    assert [result.value for result in asyncio.run(main())] == [1, 2, 3]


def test_entity_objects_of_a_batch_are_stored_first(
    shared_worker: Node, client_app: Callable[..., App]
) -> None:
    app = client_app(shared_worker.queue)

    jobs = app.submit_many("increment", [{"counter": Counter(value=v)} for v in (5, 7)])

    results = [job.get(timeout=60) for job in jobs]
    assert [r.value for r in results] == [6, 8]
    assert all(r.parent_id is not None for r in results)  # the stored input was the parent


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        (lambda app: {"counter": f"@{uuid.uuid4()}"}, graftq.EntityNotFound, "input 3"),
        (lambda app: {"counter": 5}, pydantic.ValidationError, "input 3"),
        (lambda app: {"counter": "@not-a-uuid"}, graftq.InvalidReference, "input 3"),
        (lambda app: ["not", "a", "dict"], TypeError, "input 3"),
        (
            lambda app: {"counter": f"@{app.entities.put(Student(name='x', age=1)).ecs_id}"},
            pydantic.ValidationError,
            "input 3",
        ),
        # entity objects the store refuses only as it stores them: a value assigned
        # without validation, an ecs_id that is already a lineage id
        (
            lambda app: {"counter": Counter(value=2).model_copy(update={"value": "old"})},
            pydantic.ValidationError,
            "input 3",
        ),
        (
            lambda app: {"counter": Counter(ecs_id=app.entities.put(Counter()).lineage_id)},
            graftq.InvalidEntity,
            "input 3",
        ),
    ],
)
def test_a_bad_input_names_its_index_and_nothing_is_enqueued(
    client_app: Callable[..., App],
    queue: str,
    broker_url: str,
    redis_client: redis.Redis,
    bad: Callable[[App], Any],
    error: type[Exception],
    fragment: str,
) -> None:
    app = client_app(queue)
    good = [{"counter": Counter(value=1)}] + [{"counter": f"@{c.ecs_id}"} for c in counters(app, 2)]
    inputs = [*good, bad(app), {"counter": Counter(value=9)}]
    keys = sorted(redis_client.keys())

    with pytest.raises(error) as caught:
        app.submit_many("increment", inputs)

    assert fragment in str(caught.value)
    assert queued(broker_url, queue) == 0
    assert sorted(redis_client.keys()) == keys  # the Counter objects were not stored either


def test_two_inputs_changing_one_version_two_ways_are_named(
    client_app: Callable[..., App], queue: str, broker_url: str
) -> None:
    """Entity objects of a batch are stored in one transaction, which cannot fork one
    version two ways: the error names both inputs (separate submits fork each)."""
    app = client_app(queue)
    [stored] = counters(app, 1)
    inputs = [
        {"counter": stored.model_copy(update={"value": 10})},
        {"counter": Counter(value=1)},
        {"counter": stored.model_copy(update={"value": 20})},
    ]

    with pytest.raises(graftq.InvalidEntity, match=r"inputs 0 and 2 of the batch"):
        app.submit_many("increment", inputs)
    assert queued(broker_url, queue) == 0


def test_a_task_id_for_a_batch_is_refused(client_app: Callable[..., App], queue: str) -> None:
    app = client_app(queue)

    with pytest.raises(TypeError, match="task_id"):
        app.submit_many("increment", [{"counter": "@x"}], task_id="same-for-all")


@pytest.mark.parametrize("inputs", [{"counter": "@x"}, "counter", None])
def test_a_batch_that_is_not_a_list_of_inputs_is_refused_as_such(
    client_app: Callable[..., App], queue: str, broker_url: str, inputs: Any
) -> None:
    app = client_app(queue)

    with pytest.raises(TypeError, match="inputs must be a list of input dicts"):
        app.submit_many("increment", inputs)
    assert queued(broker_url, queue) == 0


@pytest.mark.parametrize("size", [5, 50])
def test_the_batch_reads_the_store_a_bounded_number_of_times(
    client_app: Callable[..., App],
    queue: str,
    broker_url: str,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    app = client_app(queue)
    inputs = [{"counter": f"@{c.lineage_id}"} for c in counters(app, size)]
    app.submit_many("increment", inputs[:1])  # warm up: connections, script loading
    store_client = app.entities.client
    sends: list[int] = []
    connection_class = store_client.connection_pool.connection_class
    send = connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if self.db == store_client.connection_pool.connection_kwargs.get("db", 0):
            sends.append(1)
        send(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(connection_class, "send_packed_command", counting)
        jobs = app.submit_many("increment", inputs)

    assert len(jobs) == size
    assert queued(broker_url, queue) == size + 1
    assert 1 <= len(sends) <= 2, f"{len(sends)} store round trips for {size} inputs"


def test_a_batch_declares_its_queue_and_leaves_the_producer_as_it_was(
    client_app: Callable[..., App], broker_url: str, queue: str
) -> None:
    """Declarations kombu has made are answered without its retrying wrapper, for the
    batch only: a new queue is still declared, and the pooled producer is unchanged."""
    app = client_app(queue)
    with app.celery.producer_or_acquire() as producer:
        client = producer.channel.connection.client
        assert "maybe_declare" not in vars(producer)
    declared_before = set(client.declared_entities)

    app.submit_many("increment", [{"counter": f"@{c.lineage_id}"} for c in counters(app, 3)])

    assert queued(broker_url, queue) == 3
    declared = {hash(app.celery.amqp.queues[queue])} | declared_before
    assert declared <= set(client.declared_entities)
    with app.celery.producer_or_acquire() as producer:
        assert "maybe_declare" not in vars(producer)  # the batch's shortcut is gone


@contextlib.contextmanager
def listening(app: App) -> Iterator[list[dict[str, Any]]]:
    """Celery events on `app`'s broker as a Celery event receiver (Flower's kind) gets
    them, from the moment it is subscribed until the block ends."""
    seen: list[dict[str, Any]] = []
    with app.celery.connection_for_read() as connection:
        receiver = app.celery.events.Receiver(connection, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        thread.start()
        try:
            probe = app.celery.events.Dispatcher(connection)
            deadline = time.monotonic() + 30
            while not any(event["type"] == "probe-ready" for event in seen):  # subscribed?
                assert time.monotonic() < deadline, "the event receiver never subscribed"
                probe.send("probe-ready")
                time.sleep(0.05)
            probe.close()
            yield seen
        finally:
            receiver.should_stop = True
            thread.join(timeout=30)


def test_the_batch_sends_every_jobs_task_sent_event(
    client_app: Callable[..., App], queue: str
) -> None:
    """A batch's task-sent events (Flower shows queued jobs from them) go out a hundred
    to a message; a receiver gets one per job, as it would from `submit`."""
    app = client_app(queue)
    stored = counters(app, 250)
    with listening(app) as seen:
        jobs = app.submit_many("increment", [{"counter": f"@{c.lineage_id}"} for c in stored])
        deadline = time.monotonic() + 30
        while len([e for e in seen if e["type"] == "task-sent"]) < len(jobs):
            assert time.monotonic() < deadline, "not every task-sent event arrived"
            time.sleep(0.05)
        sent = [event for event in seen if event["type"] == "task-sent"]

    assert sorted(event["uuid"] for event in sent) == sorted(job.id for job in jobs)
    assert {event["name"] for event in sent} == {"graftq.increment"}
    assert {event["queue"] for event in sent} == {queue}
    assert f"@{stored[0].lineage_id}" in next(e for e in sent if e["uuid"] == jobs[0].id)["args"]


def test_a_batch_cut_off_half_sent_enqueues_nothing(
    make_school: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops answering while a batch is on its way (SIGSTOP: it reads no more, so the
    send times out part-written): `Unreachable`, and nothing of the batch is enqueued once
    the server goes on. kombu sent the batch as a plain pipeline, so the server ran the
    messages that had reached it: a few dozen of 20000 jobs were enqueued, the rest not."""
    monkeypatch.setenv("GRAFTQ_CONNECT_TIMEOUT", "1.5")
    with RedisServer() as server:
        app = make_school(new_queue(), store_url=server.url, broker=server.url)
        app.submit_many("bonus", [{"student_age": 1, "bonus_amount": 1}])  # connected
        before = queued(server.url, app.celery.conf.task_default_queue)
        inputs = [{"student_age": n, "bonus_amount": 1.5} for n in range(20_000)]
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(graftq.Unreachable, match="may have been enqueued"):
                app.submit_many("bonus", inputs)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert queued(server.url, app.celery.conf.task_default_queue) == before
        assert len(app.submit_many("bonus", inputs[:3])) == 3  # the same App sends again
        assert queued(server.url, app.celery.conf.task_default_queue) == before + 3
