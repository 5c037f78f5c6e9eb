"""A worker's fork servers (`worker.pool`) under faults: each test runs its own worker."""

from __future__ import annotations

import os
import signal
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
