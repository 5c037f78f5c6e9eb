"""Functions published at run time: run by workers that never imported them, refused
unless the worker verifies the signature with the same key (SPEC 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import graftq
from graftq import App
from graftq.devserver import RedisServer
from tests.apps.school import Student
from tests.entities import put_student
from tests.integration.worker.conftest import SCHOOL, Node, new_queue, running
from tests.processes import wait_until


class Tripwire:
    """Unpickling one creates the directory `path`: proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def make_shout(unpickled: Path) -> Callable[[Student, str], Student]:
    """A function for publishing; each `unpickled` path gives a new content version."""
    wire = Tripwire(unpickled)

    def shout(student: Student, marker: str) -> Student:
        assert wire is None  # os.mkdir's return value, once unpickled
        Path(marker).write_text("ran")
        student.name = student.name.upper()
        # Modules of this test package in the process that runs the body: none if the
        # function really travelled by value.
        student.tags = sorted(name for name in sys.modules if name.startswith("tests.integration"))
        return student

    return shout


def test_published_function_runs_on_a_worker_that_never_imported_it(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    node = Node("pub-k1", env={"GRAFTQ_SIGNING_KEY": "k1"})
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue, signing_key="k1")
        unpickled, ran = tmp_path / "unpickled", tmp_path / "ran"
        version = app.publish(make_shout(unpickled))
        assert app.callables["shout"].published and app.callables["shout"].version == version
        student = put_student(app.entities)

        job = app.submit("shout", {"student": f"@{student.lineage_id}", "marker": str(ran)})
        new = job.get(timeout=30)

        assert isinstance(new, Student) and new.name == "ADA" and new.tags == []
        assert new.parent_id == student.ecs_id and new.derived_from == job.id
        assert ran.exists() and unpickled.is_dir()  # the tripwire does fire when unpickled
        run = app.entities.provenance(new.ecs_id)
        assert run is not None and run.callable == "shout" and run.callable_version == version
        assert run.worker == node.node
        # Flower and the worker's log name the job by its callable, not graftq.published
        wait_until(
            lambda: f"Task graftq.shout[{job.id}] received" in node.proc.log(), 30, "log line"
        )

        # A changed function under the same name is a new version, recorded per execution.
        newer = app.publish(make_shout(tmp_path / "unpickled-2"))
        assert newer != version
        again = app.submit("shout", {"student": f"@{student.lineage_id}", "marker": str(ran)})
        assert again.get(timeout=30).name == "ADA"
        rerun = app.entities.execution(again.id)
        assert rerun is not None and rerun.callable_version == newer

        listed = subprocess.run(
            [sys.executable, "-m", "graftq.cli", "functions", "--app", SCHOOL],
            env={**os.environ, "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        [row] = [line for line in listed.splitlines() if " shout " in line]
        assert "published" in row and newer in row


@pytest.mark.parametrize(
    ("worker_key", "refusal"),
    [(None, "no GRAFTQ_SIGNING_KEY"), ("k2", "bad signature")],
    ids=["worker-without-key", "worker-with-wrong-key"],
)
def test_published_function_is_refused_without_the_right_key(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
    worker_key: str | None,
    refusal: str,
) -> None:
    node = Node("pub-refuse", env={"GRAFTQ_SIGNING_KEY": worker_key} if worker_key else {})
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue, signing_key="k1")
        unpickled, ran = tmp_path / "unpickled", tmp_path / "ran"
        app.publish(make_shout(unpickled))
        student = put_student(app.entities)

        job = app.submit("shout", {"student": f"@{student.lineage_id}", "marker": str(ran)})
        with pytest.raises(graftq.SignatureError, match=refusal):
            job.get(timeout=30)

        assert job.status == "FAILURE"
        assert not unpickled.exists()  # nothing was unpickled ...
        assert not ran.exists()  # ... so the body never ran
        assert app.entities.version_ids(student.lineage_id) == [str(student.ecs_id)]


def test_a_refused_published_function_leaves_a_failure_record(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    node = Node("pub-record", env={"GRAFTQ_SIGNING_KEY": "k2"})
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue, signing_key="k1")
        app.publish(make_shout(tmp_path / "unpickled"))
        student = put_student(app.entities)
        job = app.submit("shout", {"student": f"@{student.lineage_id}", "marker": "x"})
        with pytest.raises(graftq.SignatureError):
            job.get(timeout=30)

        run = app.entities.execution(job.id)
        assert run is not None, "the refused job left no Execution record"
        assert run.status == "FAILURE" and run.outputs == []
        assert run.error is not None and run.error.startswith("SignatureError: ")


def test_a_worker_refuses_a_published_function_named_like_a_callable_of_its_code(
    redis_server: RedisServer,
    broker_url: str,
    make_school: Callable[..., App],
    tmp_path: Path,
) -> None:
    node = Node("pub-taken", env={"GRAFTQ_SIGNING_KEY": "k1"})
    with running(redis_server.url, broker_url, node):
        # a producer whose code lacks the school's `bonus`, so its publish is not refused
        app = make_school(node.queue, signing_key="k1", make=lambda: App("producer"))
        ran = tmp_path / "ran"

        def bonus(student_age: int, bonus_amount: float) -> float:
            ran.write_text("ran")
            return -1.0

        app.publish(bonus)
        job = app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5})

        with pytest.raises(graftq.RegistrationError, match="'bonus' is registered in code"):
            job.get(timeout=30)
        assert not ran.exists()


def test_publishing_without_a_signing_key_is_refused(client_app: Callable[..., App]) -> None:
    app = client_app(new_queue())

    with pytest.raises(graftq.RegistrationError, match="GRAFTQ_SIGNING_KEY"):
        app.publish(make_shout(Path("/nonexistent/unpickled")))

    assert "shout" not in app.callables
    assert app.functions.names() == []


def test_publishing_a_function_that_captures_what_pickle_cannot_carry_is_refused_clearly(
    client_app: Callable[..., App],
) -> None:
    app = client_app(new_queue(), signing_key="k1")
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(graftq.RegistrationError, match=r"'guarded'.*cannot pickle '_thread.lock'"):
        app.publish(guarded)

    assert "guarded" not in app.callables
    assert app.functions.names() == []


CONSUMER = """
import sys
from graftq import App

app = App("consumer", signing_key="k1")
first, second, lineage = sys.argv[1:]
for name in (first, second):
    if name == "read_local":
        print(name, app.execute("read_local", {"item": "@" + lineage}))
    else:
        made = app.execute("make_local", {"x": 1})
        print(name, type(made).__name__, made.v)
"""


@pytest.mark.parametrize("first", ["read_local", "make_local"])
def test_published_functions_sharing_a_class_of_their_own_both_run_in_one_process(
    redis_url: str, tmp_path: Path, first: str
) -> None:
    # A class made in a function travels by value with each function that names it; a
    # process loading both gets one class back (cloudpickle's), and must store and read
    # its entities as that class, whichever function came first.
    class Local(graftq.Entity):
        v: int

    def make_local(x: int) -> Local:
        return Local(v=x)

    def read_local(item: Local) -> int:
        return item.v

    # this module's annotations are strings, which a class made in a function cannot resolve
    make_local.__annotations__ = {"x": int, "return": Local}
    read_local.__annotations__ = {"item": Local, "return": int}
    app = App("producer", redis_url=redis_url, signing_key="k1")
    app.publish(make_local)
    app.publish(read_local)
    stored = app.entities.put(Local(v=5))
    second = "make_local" if first == "read_local" else "read_local"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)

    ran = subprocess.run(
        [sys.executable, str(script), first, second, str(stored.lineage_id)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "GRAFTQ_REDIS_URL": redis_url},
    )  # fmt: skip

    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = sorted(ran.stdout.splitlines())
    assert lines == ["make_local Local 1", "read_local 5"], ran.stdout
