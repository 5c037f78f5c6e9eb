"""`register(cache=True)`: a pure function on pinned inputs runs once (SPEC 5, Memoization)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from graftq import App, EntityRegistry
from tests.apps.school import Student
from tests.entities import put_student
from tests.redis_state import exec_keys, snapshot, version_keys


def ran(marker: Path) -> int:
    return marker.read_text().count("ran\n") if marker.exists() else 0


def test_cache_returns_the_recorded_result_for_the_same_inputs(app: App, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    first = app.execute("slow_square", {"x": 7, "marker_file": str(marker)})
    second = app.execute("slow_square", {"x": 7, "marker_file": str(marker)})

    assert first == second == 49
    assert ran(marker) == 1

    assert app.execute("slow_square", {"x": 8, "marker_file": str(marker)}) == 64
    assert ran(marker) == 2


def test_cache_with_pinned_references(app: App, store: EntityRegistry, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    student = put_student(store, age=5)
    pinned = {"x": f"@{student.ecs_id}.age", "marker_file": str(marker)}

    assert app.execute("slow_square", pinned) == 25
    assert app.execute("slow_square", pinned) == 25
    assert ran(marker) == 1


def test_cache_does_not_apply_to_lineage_references(
    app: App, store: EntityRegistry, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    student = put_student(store, age=5)
    by_lineage = {"x": f"@{student.lineage_id}.age", "marker_file": str(marker)}

    assert app.execute("slow_square", by_lineage) == 25
    assert app.execute("slow_square", by_lineage) == 25
    assert ran(marker) == 2


def test_cached_entity_result_is_the_recorded_version(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    @app.register(cache=True)
    def cached_birthday(student: Student) -> Student:
        student.age += 1
        return student

    student = put_student(store)

    first = app.execute("cached_birthday", {"student": f"@{student.ecs_id}"})
    keys_after_first = snapshot(redis_client)
    second = app.execute("cached_birthday", {"student": f"@{student.ecs_id}"})

    assert isinstance(second, Student)
    assert second.model_dump() == first.model_dump()
    assert store.version_ids(student.lineage_id) == [str(student.ecs_id), str(first.ecs_id)]
    assert snapshot(redis_client) == keys_after_first  # a hit writes nothing
    assert len(exec_keys(keys_after_first)) == 1
    assert len(version_keys(keys_after_first)) == 2


def test_a_failed_run_is_not_cached(app: App, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    @app.register(cache=True)
    def fails_once(x: int, marker_file: str) -> int:
        path = Path(marker_file)
        first = not path.exists()
        with path.open("a") as out:
            out.write("ran\n")
        if first:
            raise ValueError("first run fails")
        return x

    with pytest.raises(ValueError, match="first run fails"):
        app.execute("fails_once", {"x": 3, "marker_file": str(marker)})
    assert app.execute("fails_once", {"x": 3, "marker_file": str(marker)}) == 3
    assert app.execute("fails_once", {"x": 3, "marker_file": str(marker)}) == 3
    assert ran(marker) == 2


def _adder(amount: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + amount

    return add


def test_the_memo_of_one_callable_never_answers_another_of_the_same_code(app: App) -> None:
    app.register("add_one", cache=True)(_adder(1))
    app.register("add_two", cache=True)(_adder(2))

    assert app.execute("add_one", {"x": 1}) == 2
    assert app.execute("add_two", {"x": 1}) == 3
