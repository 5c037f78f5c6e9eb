"""Head moves under `app.execute`: lineage inputs re-run, pinned inputs branch (SPEC 5)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from graftq import App, EntityRegistry, ExecutionStatus, VersionConflict
from tests.apps.school import Address, Counter, Student
from tests.entities import chain_from_head, put_counter
from tests.processes import read_pid

THREADS, CALLS = 6, 3


def increment_concurrently(app: App, counter: Counter) -> tuple[list[Any], list[BaseException]]:
    """THREADS threads each execute `increment` by lineage CALLS times, all released at once."""
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    results: list[Any] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(CALLS):
                results.append(app.execute("increment", {"counter": f"@{counter.lineage_id}"}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


def assert_one_chain(store: EntityRegistry, counter: Counter, results: list[Any]) -> None:
    total = THREADS * CALLS
    head = store.head(counter.lineage_id)
    assert isinstance(head, Counter) and head.value == total
    versions = store.history(counter.lineage_id)
    assert len(versions) == total + 1
    chain = chain_from_head(versions, head)
    assert [getattr(v, "value", None) for v in chain] == list(range(total + 1))
    assert len(chain) == total + 1  # every stored version is on the one chain
    assert sorted(r.value for r in results) == list(range(1, total + 1))
    runs = [store.provenance(v.ecs_id) for v in chain[1:]]
    assert all(run is not None and not run.branched for run in runs)


def test_concurrent_lineage_increments_form_one_chain(
    make_school: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time enough for re-runs that no job can run out of them: this checks no update is
    # lost. (That a moved head re-runs the job is shown without any race further down.)
    monkeypatch.setenv("GRAFTQ_RERUN_TIMEOUT", "600")
    monkeypatch.setenv("GRAFTQ_TEST_INCREMENT_PAUSE", "0.02")
    app = make_school()
    counter = put_counter(app.entities)

    results, errors = increment_concurrently(app, counter)

    assert errors == []
    assert_one_chain(app.entities, counter, results)


def test_concurrent_lineage_increments_with_default_settings(
    app: App, store: EntityRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Default rerun_timeout: re-runs must spread out (a body of 50 ms, read in the forked
    # child, makes the same threads win every race unless they do).
    monkeypatch.setenv("GRAFTQ_TEST_INCREMENT_PAUSE", "0.05")
    counter = put_counter(store)

    results, errors = increment_concurrently(app, counter)

    assert errors == []
    assert_one_chain(store, counter, results)


@pytest.fixture
def held_execute(app: App, tmp_path: Path) -> Iterator[Callable[[str], Future[Any]]]:
    """Start `held_increment` of a counter reference in a thread; return once its body runs.

    The body then waits for its gate, which this fixture opens when the test has
    moved the head (`gate.touch()`), or at teardown whatever happened.
    """
    gate, pid_file = tmp_path / "gate", tmp_path / "body.pid"
    with ThreadPoolExecutor(1) as pool:

        def start(reference: str) -> Future[Any]:
            data = {"counter": reference, "gate": str(gate), "pid_file": str(pid_file)}
            running = pool.submit(app.execute, "held_increment", data)
            read_pid(pid_file)  # the body runs on the version the reference meant now
            return running

        try:
            yield start
        finally:
            gate.touch()


def test_a_head_moved_under_a_lineage_run_reruns_it_on_the_new_head(
    store: EntityRegistry, held_execute: Callable[[str], Future[Any]], tmp_path: Path
) -> None:
    counter = put_counter(store)
    running = held_execute(f"@{counter.lineage_id}")

    moved = store.put(counter.model_copy(update={"value": 10}))  # the head moves under the run
    (tmp_path / "gate").touch()
    result = running.result(timeout=60)

    assert isinstance(result, Counter) and result.value == 11
    assert result.parent_id == moved.ecs_id
    assert store.head_id(counter.lineage_id) == str(result.ecs_id)
    run = store.provenance(result.ecs_id)
    assert run is not None and run.attempts == 2 and not run.branched
    assert run.inputs["counter"] == str(moved.ecs_id)
    assert store.version_ids(counter.lineage_id) == [
        str(counter.ecs_id),
        str(moved.ecs_id),
        str(result.ecs_id),
    ]


def test_a_head_moved_under_a_pinned_run_stores_a_branch(
    store: EntityRegistry, held_execute: Callable[[str], Future[Any]], tmp_path: Path
) -> None:
    counter = put_counter(store)
    running = held_execute(f"@{counter.ecs_id}")

    moved = store.put(counter.model_copy(update={"value": 10}))
    (tmp_path / "gate").touch()
    result = running.result(timeout=60)

    assert isinstance(result, Counter) and result.value == 1
    assert result.parent_id == counter.ecs_id
    assert store.head_id(counter.lineage_id) == str(moved.ecs_id)  # the head stays
    run = store.provenance(result.ecs_id)
    assert run is not None and run.attempts == 1 and run.branched
    assert run.inputs["counter"] == str(counter.ecs_id)


def test_pinned_inputs_branch_instead_of_moving_the_head(app: App, store: EntityRegistry) -> None:
    counter = put_counter(store)

    results = [app.execute("increment", {"counter": f"@{counter.ecs_id}"}) for _ in range(3)]

    assert [r.value for r in results] == [1, 1, 1]
    assert all(r.parent_id == counter.ecs_id for r in results)
    assert len({r.ecs_id for r in results}) == 3
    assert store.head_id(counter.lineage_id) == str(results[0].ecs_id)
    assert store.version_ids(counter.lineage_id) == [
        str(counter.ecs_id),
        *(str(r.ecs_id) for r in results),
    ]
    runs = [store.provenance(r.ecs_id) for r in results]
    assert [run.branched if run else None for run in runs] == [False, True, True]
    assert all(run and run.inputs == {"counter": str(counter.ecs_id)} for run in runs)


def test_a_lineage_read_both_by_head_and_pinned_branches_what_derives_from_the_pin(
    app: App, store: EntityRegistry
) -> None:
    """The rule is per lineage and about heads moved under the job: a lineage read by
    head whose head did not move re-runs nothing, and what the body derived from an older,
    pinned version of it is stored as a branch, as from any pinned input."""

    @app.register
    def restore(current: Counter, old: Counter) -> Counter:
        old.value += 100
        return old

    first = put_counter(store)
    current = store.put(first.model_copy(update={"value": 5}))

    result = app.execute("restore", {"current": f"@{first.lineage_id}", "old": f"@{first.ecs_id}"})

    assert isinstance(result, Counter) and result.value == 100
    assert result.parent_id == first.ecs_id
    assert store.head_id(first.lineage_id) == str(current.ecs_id)  # the head stays
    run = store.provenance(result.ecs_id)
    assert run is not None and run.attempts == 1 and run.branched
    assert run.inputs == {"current": str(current.ecs_id), "old": str(first.ecs_id)}


def test_lineage_input_after_branches_follows_the_head(app: App, store: EntityRegistry) -> None:
    counter = put_counter(store)
    first = app.execute("increment", {"counter": f"@{counter.ecs_id}"})
    app.execute("increment", {"counter": f"@{counter.ecs_id}"})  # a branch

    latest = app.execute("increment", {"counter": f"@{counter.lineage_id}"})

    assert latest.value == 2
    assert latest.parent_id == first.ecs_id
    assert store.head_id(counter.lineage_id) == str(latest.ecs_id)


def test_a_sub_entity_whose_own_head_moved_fails_at_once_instead_of_rerunning(
    app: App, store: EntityRegistry
) -> None:
    # The student's head holds an address whose own head a direct put moved on: every
    # re-run reads the same versions, so re-running cannot commit. It ends with
    # VersionConflict after one re-run, not after GRAFTQ_RERUN_TIMEOUT (60 s) of them.
    student = store.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert student.address is not None
    address = store.get(student.address.ecs_id)
    address.city = "Lyon"
    store.put(address)
    start = time.monotonic()

    with pytest.raises(VersionConflict, match="re-running cannot help") as raised:
        app.execute("relocate", {"address": f"@{student.lineage_id}.address", "city": "Rome"})

    assert time.monotonic() - start < 10
    assert str(address.lineage_id) in str(raised.value)
    records = [store.execution(key.split(":")[-1]) for key in store.client.keys("graftq:exec:*")]
    assert len(records) == 1 and records[0] is not None
    assert records[0].status is ExecutionStatus.FAILURE and records[0].attempts == 2
    assert store.head(address.lineage_id).city == "Lyon"
