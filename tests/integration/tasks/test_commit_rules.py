"""Commit rules of executions (issue 7 items 3, 6, 7, 9, 10; SPEC sections 5 and 6).

* The conflict rule is per lineage: moved heads of lineages read by lineage re-run the
  job; moved heads of lineages read pinned make those outputs branches.
* An execution id replays only its own callable and inputs.
* A failed commit leaves a FAILURE record.
* `register(version=...)` is part of the memo key.
* No store handle a body can reach writes to Redis; `app.publish` in a body is refused.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from graftq import (
    App,
    Entity,
    EntityRegistry,
    ExecutionStatus,
    GraftError,
    InvalidEntity,
    IsolationError,
    VersionConflict,
)
from graftq.tasks.runner import Call, run_call
from tests.apps.faithful import Counter, make_app


@pytest.fixture
def app(faithful: App) -> App:
    return faithful


@pytest.fixture
def store(faithful: App) -> EntityRegistry:
    return faithful.entities


def counter(store: EntityRegistry, value: int = 0) -> Counter:
    stored = store.put(Counter(value=value))
    assert isinstance(stored, Counter)
    return stored


def move_head(store: EntityRegistry, lineage_id: Any, value: int) -> Counter:
    """Another writer advances the lineage's head to a version holding `value`."""
    head = store.head(lineage_id)
    assert isinstance(head, Counter)
    head.value = value
    moved = store.put(head)
    assert isinstance(moved, Counter)
    return moved


class Gated:
    """Runs `gated_bump` in a thread; the test acts while the body waits at its gate."""

    def __init__(self, app: App, tmp: Path, input_data: dict[str, Any]) -> None:
        self.entered = tmp / "entered"
        self.gate = tmp / "gate"
        self.result: Any = None
        self.error: BaseException | None = None
        data = {**input_data, "entered": str(self.entered), "gate": str(self.gate)}
        self._thread = threading.Thread(target=self._run, args=(app, data))

    def _run(self, app: App, data: dict[str, Any]) -> None:
        try:
            self.result = app.execute("gated_bump", data)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Gated:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(3000):  # the body has started once its marker exists
            if self.entered.exists():
                break
            deadline.wait(0.01)
        assert self.entered.exists(), "the body never started"
        return self

    def release(self) -> None:
        self.gate.write_text("go")
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.release()

    @property
    def runs(self) -> int:
        return len(self.entered.read_text().splitlines())


# -- per-lineage conflict rule -------------------------------------------------------------


def test_pinned_input_whose_head_moved_is_branched_while_the_lineage_one_advances(
    app: App, store: EntityRegistry, tmp_path: Path
) -> None:
    a, b = counter(store, 10), counter(store, 20)

    with Gated(app, tmp_path, {"a": f"@{a.ecs_id}", "b": f"@{b.lineage_id}"}) as run:
        rival = move_head(store, a.lineage_id, 15)
        run.release()

    assert run.error is None, run.error
    assert run.runs == 1  # no re-run: only a pinned input's head moved
    new_a, new_b = run.result
    assert new_a.value == 11 and new_a.parent_id == a.ecs_id
    assert store.head_id(a.lineage_id) == str(rival.ecs_id)  # a's head stays: a branch
    assert store.head_id(b.lineage_id) == str(new_b.ecs_id)  # b's head advances
    execution = store.provenance(new_a.ecs_id)
    assert execution is not None and execution.branched


def test_lineage_input_whose_head_moved_reruns_while_the_pinned_one_is_kept(
    app: App, store: EntityRegistry, tmp_path: Path
) -> None:
    a, b = counter(store, 10), counter(store, 20)

    with Gated(app, tmp_path, {"a": f"@{a.ecs_id}", "b": f"@{b.lineage_id}"}) as run:
        move_head(store, b.lineage_id, 25)
        run.release()

    assert run.error is None, run.error
    assert run.runs == 2  # b was read by lineage and moved: re-run on the new head
    new_a, new_b = run.result
    assert new_b.value == 26
    assert store.head_id(b.lineage_id) == str(new_b.ecs_id)
    assert store.head_id(a.lineage_id) == str(new_a.ecs_id)
    assert new_a.value == 11


# -- replay checks -------------------------------------------------------------------------


def test_an_execution_id_of_another_callable_is_refused(app: App, store: EntityRegistry) -> None:
    c = counter(store)
    shared = str(uuid.uuid4())
    first = Call(execution_id=shared, worker="w", check_replay=True)
    run_call(store, app.callables["bump_both"], {"a": f"@{c.ecs_id}", "b": f"@{c.ecs_id}"}, first)

    with pytest.raises(GraftError) as caught:
        run_call(store, app.callables["older"], {"student": f"@{c.ecs_id}"}, first)

    assert "bump_both" in str(caught.value) and "older" in str(caught.value)
    assert shared in str(caught.value)


def test_an_execution_id_with_other_inputs_is_refused(app: App, store: EntityRegistry) -> None:
    one, two = counter(store, 1), counter(store, 2)
    call = Call(execution_id=str(uuid.uuid4()), worker="w", check_replay=True)
    info = app.callables["bump_both"]
    run_call(store, info, {"a": f"@{one.ecs_id}", "b": f"@{one.ecs_id}"}, call)

    with pytest.raises(GraftError) as caught:
        run_call(store, info, {"a": f"@{two.ecs_id}", "b": f"@{two.ecs_id}"}, call)

    assert call.execution_id in str(caught.value)


def test_the_same_execution_replays_without_writing(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    c = counter(store)
    call = Call(execution_id=str(uuid.uuid4()), worker="w", check_replay=True)
    info = app.callables["bump_both"]
    data = {"a": f"@{c.lineage_id}", "b": f"@{c.ecs_id}"}
    first = run_call(store, info, data, call)
    keys = sorted(redis_client.keys())

    again = run_call(store, info, data, call)

    assert again.value == first.value
    assert sorted(redis_client.keys()) == keys


# -- failure records when the commit fails --------------------------------------------------


def test_exhausted_reruns_leave_a_failure_record(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    app = make_app(rerun_timeout=0.0)
    store = app.entities
    a = counter(store)

    with Gated(app, tmp_path, {"a": f"@{a.lineage_id}", "b": f"@{a.ecs_id}"}) as run:
        move_head(store, a.lineage_id, 9)
        run.release()

    assert isinstance(run.error, VersionConflict)
    records = [store.execution(key.split(":")[-1]) for key in store.client.keys("graftq:exec:*")]
    assert len(records) == 1 and records[0] is not None
    assert records[0].status is ExecutionStatus.FAILURE
    assert records[0].error is not None and "VersionConflict" in records[0].error


class Image(Entity):
    data: bytes


class Scan(Entity):
    name: str
    image: Image


@pytest.mark.parametrize("isolation", ["fork", "none"])
def test_a_result_holding_bytes_that_are_not_utf8_fails_its_commit_naming_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, isolation: str
) -> None:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    app = App("scans")

    @app.register(isolation=isolation)
    def scan(name: str) -> Scan:
        return Scan(name=name, image=Image(data=b"\x89PNG"))

    with pytest.raises(InvalidEntity, match=r"Image [0-9a-f-]+: the bytes at data are not UTF-8"):
        app.execute("scan", {"name": "x"})

    store = app.entities
    keys = redis_client.keys()
    assert keys and all(key.startswith("graftq:exec:") for key in keys)  # no version written
    records = [store.execution(key.split(":")[-1]) for key in keys]
    assert len(records) == 1 and records[0] is not None
    assert records[0].status is ExecutionStatus.FAILURE and records[0].outputs == []
    assert records[0].error is not None and "InvalidEntity: Image" in records[0].error


# -- the memo key covers register(version=...) ---------------------------------------------


def test_version_string_is_part_of_the_memo_key(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    marker = tmp_path / "ran"
    data = {"x": 3, "marker_file": str(marker)}
    old, same, bumped = (make_app(memo_version=v) for v in ("1", "1", "2"))

    assert old.execute("square", data) == 9
    assert same.execute("square", data) == 9
    assert marker.read_text().count("ran") == 1  # same version: cached
    assert bumped.execute("square", data) == 9
    assert marker.read_text().count("ran") == 2  # a bumped version runs again
    assert old.callables["square"].version != bumped.callables["square"].version


# -- isolation holes ------------------------------------------------------------------------


def test_publish_inside_a_body_is_refused(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(IsolationError):
        app.execute("publish_inside", {"note": "x"})

    assert not redis_client.keys("graftq:fn*")


@pytest.fixture
def probe_key() -> Iterator[str]:
    yield f"probe-{uuid.uuid4().hex}"


def test_no_store_handle_in_a_body_writes_to_redis(
    app: App, redis_client: redis.Redis, probe_key: str
) -> None:
    before = set(redis_client.keys())

    app.execute("write_around", {"key": probe_key})

    written = set(redis_client.keys()) - before
    assert all(key.startswith("graftq:exec:") for key in written), written
