"""The fork server a worker pool process runs isolated bodies in (`isolation.zygote`).

Every worker test goes through it too; these pin its own promises: results and the
call's own exceptions come back, a crash or a time limit is reported and the zygote
serves on, a request whose child died unread never reaches the next child, what the
body logs reaches the caller, and a dead zygote is replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graftq import IsolationError, ReturnTypeError, TimeLimitExceeded
from graftq.tasks.isolation.zygote import Zygote
from graftq.worker.pool import APP_VARIABLE, ForkServer
from tests.apps import chatty, stillborn, unimportable, unrehearsed
from tests.apps.forkhooks import app as forkhooks
from tests.apps.school import Student, make_app
from tests.apps.school import app as school
from tests.processes import (
    children_of,
    lives,
    name_of,
    read_proc,
    running_calls,
    wait_until,
)

APP = "tests.apps.school:app"


@pytest.fixture
def zygote(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zygote]:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    server = Zygote(APP)
    yield server
    server.close()


def call(zygote: Zygote, name: str, time_limit: float | None = None, **kwargs: Any) -> Any:
    version = school.callables[name].version
    return zygote.run(name, version, kwargs, time_limit=time_limit)


def test_a_result_and_the_calls_own_exception_come_back(zygote: Zygote) -> None:
    assert call(zygote, "bonus", student_age=3, bonus_amount=2.0) == 6.0
    older = call(zygote, "birthday", student=Student(name="Al", age=3))  # pickled arguments
    assert type(older) is Student and older.age == 4
    awaited = call(zygote, "async_birthday", student=older)  # an async body, on a fresh loop
    assert type(awaited) is Student and awaited.age == 5
    with pytest.raises(ValueError, match="boom"):
        call(zygote, "fail", message="boom")
    assert call(zygote, "bonus", student_age=4, bonus_amount=2.0) == 8.0


def test_a_value_nothing_can_carry_is_a_return_type_error(zygote: Zygote) -> None:
    """As with `app.execute` and without isolation: a ReturnTypeError naming the callable."""
    with pytest.raises(ReturnTypeError, match="'countdown' returned a value graftq cannot record"):
        call(zygote, "countdown", n=3)
    assert call(zygote, "bonus", student_age=3, bonus_amount=2.0) == 6.0


def test_arguments_pickle_cannot_name_still_reach_the_body(zygote: Zygote) -> None:
    class Age(int):  # made in a function: pickle cannot name it, cloudpickle can
        pass

    assert call(zygote, "bonus", student_age=Age(3), bonus_amount=2.0) == 6.0


def test_bodies_run_at_the_callers_priority(zygote: Zygote) -> None:
    """A child that has answered exits at the lowest priority; the next body does not
    inherit it, nor does a body run at it."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert [call(zygote, "niceness") for _ in range(3)] == [ours] * 3


@pytest.mark.parametrize("how", ["exit", "segv", "kill"])
def test_a_crash_is_an_isolation_error_and_the_zygote_serves_on(zygote: Zygote, how: str) -> None:
    with pytest.raises(IsolationError, match="before sending a result"):
        call(zygote, "crash", how=how)
    assert call(zygote, "bonus", student_age=1, bonus_amount=1.0) == 1.0


def test_a_child_that_dies_in_the_middle_of_its_answer_is_an_isolation_error(
    zygote: Zygote,
) -> None:
    with pytest.raises(IsolationError, match="before sending a result"):
        call(zygote, "dies_answering", time_limit=30, size=50_000_000)
    assert call(zygote, "bonus", student_age=1, bonus_amount=1.0) == 1.0


def test_a_time_limit_kills_the_child_and_the_zygote_serves_on(
    zygote: Zygote, tmp_path: Path
) -> None:
    pid_file = tmp_path / "hang.pid"

    with pytest.raises(TimeLimitExceeded):
        call(zygote, "hang", time_limit=0.5, pid_file=str(pid_file))

    body = read_proc(pid_file)
    wait_until(lambda: not lives(body), 30, f"the timed-out body {body} is gone")
    assert call(zygote, "bonus", student_age=2, bonus_amount=1.0) == 2.0


@pytest.fixture
def unheard(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the school's bodies log (at WARNING, so the body sends it) is dropped here on
    arrival: the tests that use this log more than is worth keeping."""
    logger = logging.getLogger("tests.apps.school")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    assert logging.getLogger().getEffectiveLevel() <= logging.WARNING


@pytest.mark.usefixtures("unheard")
def test_a_body_that_never_stops_logging_still_meets_its_time_limit(zygote: Zygote) -> None:
    with pytest.raises(TimeLimitExceeded):
        call(zygote, "babble", time_limit=1.0, size=1_000_000)
    assert call(zygote, "bonus", student_age=2, bonus_amount=1.0) == 2.0


def test_an_interrupted_caller_leaves_no_running_body(zygote: Zygote, tmp_path: Path) -> None:
    """A soft time limit (an exception while waiting) kills the body before it propagates."""
    pid_file, gate = tmp_path / "held.pid", tmp_path / "gate"

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def once_the_body_runs() -> None:  # a loaded host may take seconds to start the zygote
        try:
            wait_until(pid_file.exists, 60, "the held body started")
        finally:
            os.kill(os.getpid(), signal.SIGALRM)  # the handler runs in the waiting thread

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        threading.Thread(target=once_the_body_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            call(zygote, "held", gate=str(gate), pid_file=str(pid_file))
    finally:
        signal.signal(signal.SIGALRM, previous)
    body = read_proc(pid_file)
    wait_until(lambda: not lives(body), 30, f"the interrupted body {body} is gone")
    assert running_calls(zygote.pid) == []
    assert call(zygote, "bonus", student_age=5, bonus_amount=1.0) == 5.0


def test_what_the_body_logs_and_prints_reaches_the_caller(
    zygote: Zygote, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO):
        assert call(zygote, "chatty", message="hello-zygote") == len("hello-zygote")

    assert any("chatty says hello-zygote" in r.getMessage() for r in caplog.records)
    assert "chatty prints hello-zygote" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_process_the_body_forked_answers_for_no_call(zygote: Zygote, how: str) -> None:
    """A body that forks, and whose forked process returns from it as well (no os._exit
    there): only the body's own outcome comes back, to its own call; the next calls
    get theirs."""
    assert call(zygote, "forks", how=how) == "body"
    assert call(zygote, "bonus", student_age=3, bonus_amount=1.0) == 3.0
    assert call(zygote, "forks", how=how) == "body"
    assert call(zygote, "bonus", student_age=4, bonus_amount=1.0) == 4.0


@pytest.mark.usefixtures("unheard")
def test_a_thread_the_body_leaves_logging_garbles_no_result(zygote: Zygote) -> None:
    """The body returns while its thread still logs (lines longer than a socket's buffer):
    each call gets its own result, whole, and the next call's channel is clean."""
    for size in [100_000] * 5 + [1_000_000] * 5:
        assert call(zygote, "chatter", time_limit=30, size=size) == size
        assert call(zygote, "bonus", time_limit=30, student_age=size, bonus_amount=1.0) == size


def test_the_callers_log_level_reaches_the_body(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The level the zygote starts with, and a level the caller sets later."""
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    with caplog.at_level(logging.INFO):
        server = Zygote(APP)  # starts at INFO
    try:
        with caplog.at_level(logging.INFO):
            call(server, "murmur", message="at start")
        with caplog.at_level(logging.ERROR):
            call(server, "murmur", message="raised")
        with caplog.at_level(logging.INFO):
            call(server, "murmur", message="lowered again")
    finally:
        server.close()

    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("murmur")]
    assert said == ["murmur says at start", "murmur says lowered again"]


def test_a_spare_child_that_died_idle_takes_no_call_with_it(zygote: Zygote) -> None:
    assert call(zygote, "bonus", student_age=1, bonus_amount=1.0) == 1.0
    wait_until(lambda: len(children_of(zygote.pid)) == 1, 30, "the next spare child is forked")
    os.kill(children_of(zygote.pid)[0], signal.SIGKILL)

    assert call(zygote, "bonus", student_age=7, bonus_amount=1.0) == 7.0
    assert call(zygote, "bonus", student_age=8, bonus_amount=1.0) == 8.0


def test_a_dead_zygote_is_replaced(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    monkeypatch.setenv(APP_VARIABLE, APP)
    server = ForkServer(school)
    server.start()
    try:
        first = server.get()
        assert first is not None and call(first, "bonus", student_age=1, bonus_amount=3.0) == 3.0
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: not first.alive(), 30, "the killed zygote is gone")

        second = server.get()

        assert second is not None and second.pid != first.pid
        assert call(second, "bonus", student_age=2, bonus_amount=3.0) == 6.0
    finally:
        server.stop()


def test_a_zygote_that_cannot_start_leaves_the_bodies_to_the_pool_process(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the worker imported the module; a fresh interpreter may fail to (an import that
    # fails only sometimes): jobs fork from the pool process then, never fail for it
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    monkeypatch.setenv(APP_VARIABLE, "tests.apps.unimportable:app")
    monkeypatch.setenv(unimportable.FAIL, "1")
    server = ForkServer(unimportable.app)
    server.start()
    try:
        assert server.get() is None
        assert server.get() is None  # not started again for every job
    finally:
        server.stop()
    assert "tests.apps.unimportable:app (pid" in caplog.text
    assert "could not start" in caplog.text and "forks isolated bodies itself" in caplog.text


def test_no_zygote_for_another_app_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APP_VARIABLE, "tests.apps.faithful:app")
    server = ForkServer(school)
    server.start()
    assert server.get() is None  # GRAFTQ_APP names another App
    monkeypatch.setenv(APP_VARIABLE, APP)
    monkeypatch.setenv("GRAFTQ_ZYGOTE", "false")
    server = ForkServer(make_app())
    server.start()
    assert server.get() is None


@pytest.fixture
def start_zygote(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Zygote]]:
    """Starts a zygote of an App module, with more environment; all are closed after."""
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    started: list[Zygote] = []

    def start(app_path: str, **env: str) -> Zygote:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        started.append(Zygote(app_path))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_the_apps_at_fork_hooks_run_once_in_each_child(
    start_zygote: Callable[..., Zygote],
) -> None:
    server = start_zygote("tests.apps.forkhooks:app")
    version = forkhooks.callables["fork_state"].version
    states = [server.run("fork_state", version, {}) for _ in range(3)]

    assert [state["hook_runs"] for state in states] == [1, 1, 1]
    assert len({state["random"] for state in states}) == 3  # random reseeded in every child


def test_a_thread_of_the_zygote_itself_speaks_for_no_call(
    start_zygote: Callable[..., Zygote],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a thread the App's module started in the zygote is no call's: what it logs or
    # prints is not the call's output, nor may it share the call's channel (its frames
    # would garble the call's, and a lock it held at a fork would stay held in the child)
    server = start_zygote("tests.apps.chatty:app", **{chatty.CHATTER: "1"})
    version = chatty.app.callables["talk"].version
    with caplog.at_level(logging.WARNING):
        assert [server.run("talk", version, {"n": n}, time_limit=20) for n in range(6)] == list(
            range(6)
        )

    printed = capsys.readouterr().out
    assert "talk 5" in caplog.text and "talk 5" in printed
    assert chatty.TICK not in caplog.text and chatty.TICK not in printed


def test_a_spare_whose_rehearsal_fails_still_serves(start_zygote: Callable[..., Zygote]) -> None:
    # the rehearsal only prepares pages: whatever becomes of it, the spare waits for its
    # call and takes it (were it to die instead, the zygote would fork spare after spare)
    server = start_zygote("tests.apps.unrehearsed:app", **{unrehearsed.BREAK: "1"})
    version = unrehearsed.app.callables["double"].version
    doubled = [server.run("double", version, {"x": 1}, time_limit=20)]

    # the one child left is a spare (a child that took a call is named graftq-call)
    def spares() -> list[int]:
        children = children_of(server.pid)
        return children if [name_of(pid) for pid in children] == ["graftq-zygote"] else []

    wait_until(spares, 10, "the zygote's next spare, alone")
    spare = spares()
    time.sleep(0.3)  # were a failed rehearsal to end it, others would have come and gone
    assert children_of(server.pid) == spare
    doubled.append(server.run("double", version, {"x": 2}, time_limit=20))
    assert doubled == [2, 4]


def test_a_zygote_whose_children_all_die_before_a_call_is_stopped(
    start_zygote: Callable[..., Zygote],
) -> None:
    # an App module that kills every child of its process: no spare lives to take the
    # call, so the call fails, and the zygote stops forking them (the worker starts
    # another for its next job)
    server = start_zygote("tests.apps.stillborn:app", **{stillborn.DIE: "1"})
    version = stillborn.app.callables["one"].version
    with pytest.raises(IsolationError, match=r"died before taking a call .*status 7"):
        server.run("one", version, {}, time_limit=30)
    assert not server.alive()


def test_a_zygote_that_cannot_import_its_app_says_so(start_zygote: Callable[..., Zygote]) -> None:
    server = start_zygote("tests.apps.school:no_such_app")  # its import raises AttributeError
    version = school.callables["bonus"].version
    started = r"could not start \(its error is in the worker's log\): it exited with status 1"

    with pytest.raises(IsolationError, match=rf"school:no_such_app \(pid \d+\) {started}"):
        server.run("bonus", version, {"student_age": 1, "bonus_amount": 1.0})
