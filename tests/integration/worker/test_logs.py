"""The worker's log: every line of a job names it, and one summary line per job."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest

from graftq import App, Entity
from tests.apps.school import Student
from tests.integration.worker.conftest import Node
from tests.integration.worker.helpers import wait_until

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
