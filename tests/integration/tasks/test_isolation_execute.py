"""What an isolated body can and cannot do to the store and the caller (SPEC section 6)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from graftq import (
    App,
    EntityRegistry,
    Execution,
    ExecutionStatus,
    IsolationError,
    ReturnTypeError,
    TimeLimitExceeded,
)
from tests.apps.school import Boom, Student
from tests.integration.tasks.helpers import (
    changed_keys,
    exec_keys,
    put_student,
    snapshot,
    version_keys,
)


def only_failure_records(client: redis.Redis, changed: set[str]) -> None:
    """Nothing changed but (at most) one execution record, and that one failed."""
    assert not version_keys(changed)
    assert changed == exec_keys(changed)
    assert len(changed) <= 1
    for key in changed:
        raw = client.get(key)
        assert raw is not None
        record = Execution.model_validate_json(raw)
        assert record.status is ExecutionStatus.FAILURE
        assert record.outputs == []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """A file the body writes its pid to; a child still alive afterwards is killed."""
    path = tmp_path / "child.pid"
    yield path
    if path.exists():
        pid = int(path.read_text())
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_meddling_body_changes_nothing_but_its_execution_record(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = put_student(store)
    before = snapshot(redis_client)

    assert app.execute("meddle", {"student": f"@{student.lineage_id}"}) == 1000

    changed = changed_keys(before, snapshot(redis_client))
    assert len(changed) == 1 and changed == exec_keys(changed)
    assert store.head_id(student.lineage_id) == str(student.ecs_id)
    assert store.get(student.ecs_id).age == 20
    assert store.version_ids(student.lineage_id) == [str(student.ecs_id)]


def test_meddling_body_leaves_the_callers_process_alone(app: App, store: EntityRegistry) -> None:
    student = put_student(store)
    expected = student.model_dump()

    app.execute("meddle", {"student": student})

    assert student.model_dump() == expected
    assert store.isolated is False  # the overlay was only installed in the child


def test_body_reads_the_store_but_its_writes_stay_private(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    @app.register
    def write_then_read(student: Student) -> int:
        student.age = 77
        stored = app.entities.put(student)
        seen = app.entities.head(student.lineage_id)  # the overlay sees its own write
        return seen.age if seen.ecs_id == stored.ecs_id else -1

    student = put_student(store)
    before = snapshot(redis_client)

    assert app.execute("write_then_read", {"student": f"@{student.ecs_id}"}) == 77

    changed = changed_keys(before, snapshot(redis_client))
    assert changed == exec_keys(changed) and len(changed) == 1
    assert store.head(student.lineage_id).age == 20


def test_body_globals_do_not_leak(app: App) -> None:
    seen: list[int] = []

    @app.register
    def remember(value: int) -> int:
        seen.append(value)
        return len(seen)

    assert app.execute("remember", {"value": 1}) == 1
    assert app.execute("remember", {"value": 2}) == 1
    assert seen == []


@pytest.mark.parametrize("how", ["exit", "segv", "kill"])
def test_crashing_child_is_an_isolation_error_and_commits_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis, how: str
) -> None:
    crash = app.callables["crash"].func

    @app.register
    def quiet_crash(how: str) -> int:
        faulthandler.disable()  # runs in the child only
        result: int = crash(how)
        return result

    put_student(store)
    before = snapshot(redis_client)

    with pytest.raises(IsolationError) as caught:
        # SIGSEGV would make the inherited faulthandler dump a traceback into the log
        app.execute("quiet_crash" if how == "segv" else "crash", {"how": how})

    expected = {"exit": "status 3", "segv": "SIGSEGV", "kill": "SIGKILL"}[how]
    assert expected in str(caught.value)
    only_failure_records(redis_client, changed_keys(before, snapshot(redis_client)))
    assert app.execute("bonus", {"student_age": 2, "bonus_amount": 1.5}) == 3.0  # still serving


def test_time_limit_kills_the_child(app: App, redis_client: redis.Redis, pid_file: Path) -> None:
    before = snapshot(redis_client)
    started = time.monotonic()

    with pytest.raises(TimeLimitExceeded) as caught:
        app.execute("hang", {"pid_file": str(pid_file)})

    elapsed = time.monotonic() - started
    assert isinstance(caught.value, IsolationError)
    assert 0.9 <= elapsed < 3.0
    pid = int(pid_file.read_text())
    assert str(pid) in str(caught.value)
    assert not alive(pid)
    only_failure_records(redis_client, changed_keys(before, snapshot(redis_client)))


def test_body_exception_comes_back_with_its_message(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError) as caught:
        app.execute("fail", {"message": "no marks for you"})

    assert str(caught.value) == "no marks for you"
    changed = changed_keys({}, snapshot(redis_client))
    only_failure_records(redis_client, changed)
    (key,) = changed  # a failure is recorded
    record = Execution.model_validate_json(redis_client.get(key) or "")
    assert record.callable == "fail"
    assert record.error == "ValueError: no marks for you"
    assert record.inputs == {"message": "no marks for you"}


def test_custom_exception_type_survives(app: App) -> None:
    with pytest.raises(Boom) as caught:
        app.execute("fail_custom", {"message": "kaboom"})

    assert type(caught.value) is Boom
    assert str(caught.value) == "kaboom"


def test_wrong_return_type_commits_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = put_student(store)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError) as caught:
        app.execute("wrong_type", {"student": f"@{student.lineage_id}"})

    assert isinstance(caught.value, TypeError)
    assert "wrong_type" in str(caught.value)
    only_failure_records(redis_client, changed_keys(before, snapshot(redis_client)))
    assert store.head_id(student.lineage_id) == str(student.ecs_id)


def test_wrong_return_type_inline_commits_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    @app.register(isolation="none")
    def inline_wrong(student: Student) -> int:
        student.age = 5
        return student  # type: ignore[return-value]

    student = put_student(store)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError):
        app.execute("inline_wrong", {"student": f"@{student.lineage_id}"})

    only_failure_records(redis_client, changed_keys(before, snapshot(redis_client)))
