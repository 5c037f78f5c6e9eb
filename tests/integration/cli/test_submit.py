"""`graftq submit ... --wait` against a real `graftq worker` subprocess.

The worker consumes Celery's default queue (the CLI has no --queue option) on
broker db 1; the CLI subprocesses get the same GRAFTQ_BROKER_URL/RESULT_BACKEND.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftq import App
from graftq.devserver import RedisServer, WorkerProcess
from tests.apps.school import Student
from tests.integration.cli.conftest import CLI, SCHOOL, Ada, output
from tests.processes import wait_until

SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # rich's default "dots" spinner


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, broker_url: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        SCHOOL,
        redis_server.url,
        env={
            "GRAFTQ_BROKER_URL": broker_url,
            "GRAFTQ_RESULT_BACKEND": broker_url,
            "GRAFTQ_SIGNING_KEY": "",
        },
    )
    try:
        with process:
            yield process
    finally:
        print(f"--- worker log ---\n{process.log()[-4000:]}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(process.log_path)


@pytest.fixture
def on_worker(cli: CLI, broker_url: str, worker: WorkerProcess) -> CLI:
    """The CLI with the worker's broker and result backend."""

    def invoke(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, GRAFTQ_BROKER_URL=broker_url, GRAFTQ_RESULT_BACKEND=broker_url, **extra)

    return invoke


def split(stdout: str) -> tuple[str, object]:
    """The 'job ... submitted' line and the JSON value printed after it."""
    first, _, rest = stdout.partition("\n")
    return first, json.loads(rest)


def test_submit_wait_prints_the_new_version(on_worker: CLI, ada: Ada, school: App) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "birthday",
        "--input", json.dumps({"student": f"@{ada.lineage_id}"}),
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    first, value = split(proc.stdout)
    assert first.startswith("job ") and first.endswith("submitted (birthday)"), first
    assert isinstance(value, dict)
    assert value["age"] == 22  # the head (v3) was 21
    assert value["major"] == "physics"
    assert value["lineage_id"] == ada.lineage_id
    assert value["parent_id"] == ada.head
    assert value["ecs_id"] not in ada.versions
    head = school.entities.head(ada.lineage_id)
    assert str(head.ecs_id) == value["ecs_id"]
    assert isinstance(head, Student) and head.age == 22

    shown = on_worker("show", value["ecs_id"], "--app", SCHOOL, wide=True)
    assert shown.returncode == 0, output(shown)
    assert "produced by birthday in execution" in shown.stdout


def test_submit_wait_pinned_version_and_transform(on_worker: CLI, ada: Ada, school: App) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "transform_student",
        "--input", json.dumps({"student": f"@{ada.versions[0]}"}),
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    _, value = split(proc.stdout)
    assert isinstance(value, dict)
    assert value["undergraduate_degree"] == "math"  # from v1, not the head's "physics"
    assert value["lineage_id"] != ada.lineage_id
    assert str(school.entities.head_id(ada.lineage_id)) == ada.head


def test_submit_wait_field_reference_prints_a_plain_value(on_worker: CLI, ada: Ada) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "bonus",
        "--input", json.dumps({"student_age": f"@{ada.lineage_id}.age", "bonus_amount": 1.5}),
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    _, value = split(proc.stdout)
    assert value == 31.5


def test_submit_without_wait_prints_the_job_id_and_the_job_runs(
    on_worker: CLI, ada: Ada, school: App
) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "birthday",
        "--input", json.dumps({"student": f"@{ada.lineage_id}"}),
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("submitted (birthday)"), lines
    assert str(uuid.UUID(lines[0].split()[1])) == lines[0].split()[1]

    def moved() -> bool:
        return school.entities.head_id(ada.lineage_id) != ada.head

    wait_until(moved, 60, "the submitted job ran")
    head = school.entities.head(ada.lineage_id)
    assert isinstance(head, Student) and head.age == 22


def _sleepy_with_short_timeout(on_worker: CLI, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return on_worker(
        "submit", "--app", SCHOOL, "sleepy",
        "--input", json.dumps({"seconds": 1.5, "pid_file": str(tmp_path / "pid")}),
        "--wait", "--timeout", "0.5",
    )  # fmt: skip


def test_submit_wait_timeout_exits_1_with_a_job_timeout_message(
    on_worker: CLI, tmp_path: Path
) -> None:
    proc = _sleepy_with_short_timeout(on_worker, tmp_path)
    assert proc.returncode == 1, output(proc)
    text = " ".join(output(proc).split())
    assert "submitted (sleepy)" in text
    assert "error: job " in text and "did not finish within 0.5s" in text


def test_submit_wait_timeout_prints_no_traceback(on_worker: CLI, tmp_path: Path) -> None:
    proc = _sleepy_with_short_timeout(on_worker, tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in output(proc), output(proc)
    assert "Exception ignored" not in output(proc)


def test_submit_wait_shows_plain_progress_lines_on_stderr_when_not_a_terminal(
    on_worker: CLI, ada: Ada
) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "birthday",
        "--input", json.dumps({"student": f"@{ada.lineage_id}"}),
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    job_id = proc.stdout.split()[1]
    assert re.search(rf"^birthday job {job_id}: SUCCESS after \d+\.\ds$", proc.stderr, re.M)
    assert "\x1b" not in proc.stderr and not SPINNER & set(proc.stderr), proc.stderr


def test_submit_wait_shows_a_spinner_on_a_terminal(
    cli_env: dict[str, str], broker_url: str, worker: WorkerProcess, ada: Ada
) -> None:
    env = {**cli_env, "GRAFTQ_BROKER_URL": broker_url, "GRAFTQ_RESULT_BACKEND": broker_url}
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm-256color"
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graftq.cli", "submit", "--app", SCHOOL, "sleepy",
             "--input", json.dumps({"seconds": 1.0, "pid_file": os.devnull}),
             "--wait", "--timeout", "30"],
            env=env, stdout=subprocess.PIPE, stderr=follower, text=True,
        )  # fmt: skip
        os.close(follower)
        screen = b""
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(leader, 4096):
                screen += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert proc.returncode == 0, text + out
    assert SPINNER & set(text), text  # rich's spinner frames were drawn
    assert re.search(r"sleepy job \S+: SUCCESS after \d+\.\ds", text), text
    assert out.strip().endswith("1")  # the value itself still goes to stdout


def test_submit_wait_of_a_failing_job_prints_its_error_in_one_line(on_worker: CLI) -> None:
    proc = on_worker(
        "submit", "--app", SCHOOL, "fail_custom", "--input", '{"message": "no such course"}',
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert proc.returncode == 1, output(proc)
    assert "Traceback" not in output(proc), output(proc)
    text = " ".join(output(proc).split())
    assert re.search(r"error: job \S+ \(fail_custom\) failed: .*Boom: no such course", text), text
