"""Head moves under `app.execute`: lineage inputs re-run, pinned inputs branch (SPEC 5)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from graftq import App, EntityRegistry
from tests.apps.school import Counter, make_app

THREADS, CALLS = 6, 3


def put_counter(store: EntityRegistry) -> Counter:
    stored = store.put(Counter(value=0))
    assert isinstance(stored, Counter)
    return stored


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
    by_id = {version.ecs_id: version for version in versions}
    chain = [head]
    while chain[-1].parent_id is not None:
        chain.append(by_id[chain[-1].parent_id])
    assert [v.value for v in reversed(chain)] == list(range(total + 1))
    assert len(chain) == total + 1  # every stored version is on the one chain
    assert sorted(r.value for r in results) == list(range(1, total + 1))
    runs = [store.provenance(v.ecs_id) for v in chain[:-1]]
    assert all(run is not None and not run.branched for run in runs)


def test_concurrent_lineage_increments_form_one_chain(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time enough for re-runs that no job can run out of them: this checks the re-run itself.
    # A body of 20 ms (read in the forked child) makes head moves under a run certain.
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    monkeypatch.setenv("GRAFTQ_RERUN_TIMEOUT", "600")
    monkeypatch.setenv("GRAFTQ_TEST_INCREMENT_PAUSE", "0.02")
    app = make_app()
    counter = put_counter(app.entities)

    results, errors = increment_concurrently(app, counter)

    assert errors == []
    assert_one_chain(app.entities, counter, results)
    attempts = [run.attempts for r in results if (run := app.entities.provenance(r.ecs_id))]
    assert len(attempts) == THREADS * CALLS
    assert max(attempts) > 1  # some jobs really were re-run on a moved head


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


def test_lineage_input_after_branches_follows_the_head(app: App, store: EntityRegistry) -> None:
    counter = put_counter(store)
    first = app.execute("increment", {"counter": f"@{counter.ecs_id}"})
    app.execute("increment", {"counter": f"@{counter.ecs_id}"})  # a branch

    latest = app.execute("increment", {"counter": f"@{counter.lineage_id}"})

    assert latest.value == 2
    assert latest.parent_id == first.ecs_id
    assert store.head_id(counter.lineage_id) == str(latest.ecs_id)
