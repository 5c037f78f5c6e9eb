"""The worker's log: every line of a job names it, and one summary line per job."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from graftq import App, Entity
from graftq.devserver import RedisServer
from tests.apps.school import Student
from tests.integration.worker.conftest import Node, running
from tests.integration.worker.helpers import wait_until
from tests.processes import lives, read_proc

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def summary_lines(node: Node, execution_id: str) -> list[str]:
    return [
        line
        for line in node.proc.log().splitlines()
        if f"[{execution_id}] SUCCESS" in line or f"[{execution_id}] FAILURE" in line
    ]


def one_summary(node: Node, execution_id: str) -> str:
    wait_until(lambda: summary_lines(node, execution_id), 30, f"summary of {execution_id}")
    [line] = summary_lines(node, execution_id)
    return line


def test_a_successful_job_logs_callable_id_outputs_attempts_and_duration(
    shared_worker: Node, client_app: Callable[..., App]
) -> None:
    app = client_app(shared_worker.queue)
    ada = app.entities.put(Student(name="Ada", age=20))
    job = app.submit("birthday", {"student": f"@{ada.lineage_id}"})
    older = job.get(timeout=30)
    assert isinstance(older, Entity)
    line = one_summary(shared_worker, job.id)
    pattern = (
        rf"INFO/ForkPoolWorker-\d+\] birthday\[{job.id}\] SUCCESS "
        rf"outputs={older.ecs_id} attempts=1 duration=\d+\.\d{{3}}s$"
    )
    assert re.search(pattern, line), line


def test_a_failed_job_logs_its_error(shared_worker: Node, client_app: Callable[..., App]) -> None:
    app = client_app(shared_worker.queue)
    job = app.submit("fail", {"message": "boom"})
    with pytest.raises(ValueError, match="boom"):
        job.get(timeout=30)
    line = one_summary(shared_worker, job.id)
    pattern = (
        rf"fail\[{job.id}\] FAILURE error=\"ValueError: boom\" outputs=- attempts=1 "
        r"duration=\d+\.\d{3}s$"
    )
    assert re.search(pattern, line), line


def test_every_line_a_job_logs_names_its_callable_and_execution_id(
    shared_worker: Node, client_app: Callable[..., App]
) -> None:
    app = client_app(shared_worker.queue)
    marker = f"hello-{uuid.uuid4().hex}"
    job = app.submit("chatty", {"message": marker})
    assert job.get(timeout=30) == len(marker)
    one_summary(shared_worker, job.id)
    lines = [line for line in shared_worker.proc.log().splitlines() if job.id in line]
    said = [line for line in shared_worker.proc.log().splitlines() if marker in line]
    assert len(said) == 2, said  # the logged line and the printed one
    for line in said:
        assert f"chatty[{job.id}]" in line, line
    # Celery's own lines name it as graftq.chatty[<id>]; together with ours, each names both
    for line in lines:
        assert re.search(rf"chatty\[{job.id}\]", line), line
    assert any("received" in line for line in lines)
    assert re.fullmatch(UUID, job.id)


def test_a_job_whose_process_was_ended_is_not_logged_as_failed(
    redis_server: RedisServer, broker_url: str, client_app: Callable[..., App], tmp_path: Path
) -> None:
    """`revoke(terminate=True)` ends the pool process running the job (a cold shutdown
    does the same): Celery reports the job REVOKED (or delivers it again), never FAILURE."""
    node = Node("terminated", concurrency=1)
    gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"
    with running(redis_server.url, broker_url, node):
        app = client_app(node.queue)
        job = app.submit("held", {"gate": str(gate), "pid_file": str(pid_file)})
        try:
            body = read_proc(pid_file)
            app.celery.control.revoke(job.id, terminate=True)
            wait_until(lambda: not lives(body), 30, "the held body ended with its pool process")
        finally:
            gate.touch()
        wait_until(lambda: job.status == "REVOKED", 30, "the job is REVOKED")
        line = f"held[{job.id}] INTERRUPTED"
        wait_until(lambda: line in node.proc.log(), 30, "the job's summary line")
        assert f"[{job.id}] FAILURE" not in node.proc.log()
        assert app.entities.execution(job.id) is None
        assert app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}).get(timeout=30) == 3.0
