"""What an isolated body can and cannot do to the store and the caller (SPEC section 6)."""

from __future__ import annotations

import faulthandler
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from graftq import App, EntityRegistry, IsolationError, ReturnTypeError, TimeLimitExceeded
from tests.apps.school import Boom, QuotaError, Student
from tests.entities import put_student
from tests.processes import kill, lives, proc_in
from tests.redis_state import changed_keys, exec_keys, only_a_failure_record, snapshot


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """A file the body writes its identity to; that very process, if it outlived the test,
    is killed (never another one that took its pid)."""
    path = tmp_path / "child.pid"
    yield path
    proc = proc_in(path)
    if proc is not None:
        kill(proc)


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


def test_a_body_reads_the_store_though_another_thread_held_its_pool_at_the_fork(
    app: App, store: EntityRegistry
) -> None:
    # aexecute, or a web server's thread pool, forks from one thread of many: another may
    # hold the store's connection pool lock just then, and the child must not wait for it
    @app.register(time_limit=10)
    def head_age(lineage: str) -> int:
        return app.entities.head(lineage).age

    student = put_student(store)
    lock = getattr(store.client.connection_pool, "_lock", None)
    if lock is None:
        pytest.skip("this redis-py's pool has no lock to hold")
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(2.0, done.set).start()  # long after the fork; then the commit may go on
    try:
        # no store read before the fork (literal input): the child forks with the lock held
        age = app.execute("head_age", {"lineage": str(student.lineage_id)})
    finally:
        done.set()
        holder.join(30)
    assert age == 20


def test_a_body_that_stores_what_it_returns_commits_it_as_a_successor(
    app: App, store: EntityRegistry
) -> None:
    # its store writes are private, its return value is committed: the version it stored
    # (twice here) comes back as a changed copy of the version it read, and is committed
    @app.register
    def saved_twice(student: Student) -> tuple[Student, Student]:
        student.age += 1
        saved = app.entities.put(student)
        saved.age += 1
        again = app.entities.put(saved)
        fresh = app.entities.put(Student(name="New", age=1))
        return again, fresh

    ada = put_student(store)
    older, fresh = app.execute("saved_twice", {"student": f"@{ada.lineage_id}"})

    assert older.age == 22 and older.parent_id == ada.ecs_id
    assert store.head(ada.lineage_id).ecs_id == older.ecs_id
    run = store.provenance(older.ecs_id)
    assert run is not None and run.id == older.derived_from
    assert [v.age for v in store.history(ada.lineage_id)] == [20, 22]
    assert fresh.parent_id is None and store.head(fresh.lineage_id) == fresh


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
    record = only_a_failure_record(redis_client, before, "IsolationError")
    assert expected in (record.error or "")
    assert app.execute("bonus", {"student_age": 2, "bonus_amount": 1.5}) == 3.0  # still serving


def test_time_limit_kills_the_child(app: App, redis_client: redis.Redis, pid_file: Path) -> None:
    before = snapshot(redis_client)
    started = time.monotonic()

    with pytest.raises(TimeLimitExceeded) as caught:
        app.execute("hang", {"pid_file": str(pid_file)})  # register(time_limit=1.0), sleeps 600 s

    elapsed = time.monotonic() - started
    assert isinstance(caught.value, IsolationError)
    # The promise: stopped at its limit, so never before 1 s, and long before the
    # body's 600 s sleep would have ended (the bound leaves room for a loaded machine).
    assert 1.0 <= elapsed < 60.0
    proc = proc_in(pid_file)
    assert proc is not None, "the body never ran"
    assert f"child pid {proc.pid} killed" in str(caught.value)
    assert not lives(proc)  # killed and reaped before execute returned
    only_a_failure_record(redis_client, before, "TimeLimitExceeded")


def test_body_exception_comes_back_with_its_message(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError) as caught:
        app.execute("fail", {"message": "no marks for you"})

    assert str(caught.value) == "no marks for you"
    record = only_a_failure_record(redis_client, {}, "ValueError")
    assert record.callable == "fail"
    assert record.error == "ValueError: no marks for you"
    assert record.inputs == {"message": "no marks for you"}


def test_custom_exception_type_survives(app: App) -> None:
    with pytest.raises(Boom) as caught:
        app.execute("fail_custom", {"message": "kaboom"})

    assert type(caught.value) is Boom
    assert str(caught.value) == "kaboom"


@pytest.mark.parametrize("name", ["over_quota", "over_quota_inline"])
def test_exception_with_its_own_init_keeps_its_type(app: App, name: str) -> None:
    with pytest.raises(QuotaError) as caught:
        app.execute(name, {"n": 3})

    assert type(caught.value) is QuotaError
    assert str(caught.value) == "quota of 3 exceeded"


def test_a_timeout_error_of_the_body_is_not_an_unreachable_store(app: App) -> None:
    with pytest.raises(TimeoutError) as caught:
        app.execute("upstream_timeout", {"message": "the upstream API was slow"})

    assert type(caught.value) is TimeoutError
    assert str(caught.value) == "the upstream API was slow"


def test_wrong_return_type_commits_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = put_student(store)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError) as caught:
        app.execute("wrong_type", {"student": f"@{student.lineage_id}"})

    assert isinstance(caught.value, TypeError)
    assert "wrong_type" in str(caught.value)
    record = only_a_failure_record(redis_client, before, "ReturnTypeError")
    assert record.callable == "wrong_type" and record.inputs == {"student": str(student.ecs_id)}
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

    only_a_failure_record(redis_client, before, "ReturnTypeError")
    assert store.head(student.lineage_id).age == 20
