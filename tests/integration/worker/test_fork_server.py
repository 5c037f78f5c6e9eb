"""A worker's fork servers (`worker.pool`) under faults: each test runs its own worker."""

from __future__ import annotations

import importlib
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from graftq import App, IsolationError
from graftq.devserver import RedisServer
from tests.apps import hostile
from tests.apps.school import Counter
from tests.integration.worker.conftest import Node, running
from tests.processes import children_of, identify, kill, lives, running_calls, wait_until

HOSTILE = "tests.apps.hostile:app"
ROOT = Path(__file__).resolve().parents[3]
EDITED = """
from graftq import App

FACTOR = {factor}


def make_app() -> App:
    app = App("edited")

    @app.register
    def scaled(x: int) -> int:
        return x * FACTOR{change}

    return app


app = make_app()
"""


def zygote_running_a_call(node: Node) -> int:
    """The zygote (a pool process's child) whose child runs the job on `node`."""
    found: list[int] = []

    def running_body() -> bool:
        found[:] = [z for p in node.proc.pool_pids() for z in children_of(p) if running_calls(z)]
        return bool(found)

    wait_until(running_body, 30, f"a job body running on {node.name}")
    return found[0]


def test_a_killed_zygote_fails_its_job_leaves_no_orphan_and_the_worker_serves_on(
    redis_server: RedisServer, broker_url: str, make_school: Callable[..., App], tmp_path: Path
) -> None:
    # The call's child dies with its zygote (PDEATHSIG), but what the body detached with
    # setsid and a double fork had only that child and the zygote to kill it.
    node = Node("zygote-killed", app_path=HOSTILE, concurrency=1)
    pid_file = tmp_path / "orphan.pid"
    with running(redis_server.url, broker_url, node):
        app = make_school(node.queue, make=hostile.make_app)
        job = app.submit("orphan_and_wait", {"pid_file": str(pid_file)})
        zygote = zygote_running_a_call(node)
        wait_until(pid_file.exists, 30, "the body left its orphan")
        orphan = identify(int(pid_file.read_text()))
        assert orphan is not None
        try:
            os.kill(zygote, signal.SIGKILL)

            with pytest.raises(IsolationError, match=rf"zygote .*\(pid {zygote}\).* SIGKILL"):
                job.get(timeout=60)
            wait_until(lambda: not lives(orphan), 10, f"the call's orphan {orphan.pid} is gone")
            record = app.entities.execution(job.id)
            assert record is not None and record.status == "FAILURE", record
            counter = app.entities.put(Counter(value=0))
            again = app.submit("increment", {"counter": f"@{counter.lineage_id}"})
            assert again.get(timeout=60).value == 1
        finally:
            kill(orphan)


def test_code_edited_under_a_running_worker_is_never_run_by_it(
    redis_server: RedisServer,
    broker_url: str,
    make_school: Callable[..., App],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each job gets a new pool process, whose zygote imports the App's module afresh:
    # from a file edited since the worker loaded it. The worker runs the code it loaded
    # (as a Celery worker does until restarted), and records that code's version.
    module = f"edited_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{module}.py"
    source.write_text(EDITED.format(factor=1, change=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    edited = importlib.import_module(module)
    version = edited.app.callables["scaled"].version
    node = Node(
        "edited",
        app_path=f"{module}:app",
        concurrency=1,
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        extra=["--max-tasks-per-child", "1"],
    )
    with running(redis_server.url, broker_url, node):
        app = make_school(node.queue, make=edited.make_app)
        assert app.submit("scaled", {"x": 2}).get(timeout=60) == 2

        for factor, change in [(10, ""), (10, " + 1")]:  # a constant it reads, its own code
            source.write_text(EDITED.format(factor=factor, change=change))
            job = app.submit("scaled", {"x": 2})

            assert job.get(timeout=60) == 2
            record = app.entities.execution(job.id)
            assert record is not None and record.callable_version == version
        assert f"{source} changed since the worker loaded it" in node.proc.log()
