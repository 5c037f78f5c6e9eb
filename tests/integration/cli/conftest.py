"""The `graftq` command run for real: `python -m graftq.cli ...` subprocesses.

Each subprocess gets a clean environment: no inherited `GRAFTQ_*` variable and no
COLUMNS (so it renders like a pipe, 80 columns) unless a test asks for them.
Store: db 0 of the session's redis-server (flushed per test); broker/results: db 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from graftq import App
from tests.apps.school import Address, Student

SCHOOL = "tests.apps.school:app"
WIDE = "300"  # COLUMNS for tests that read tables/long lines, not their layout


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without GRAFTQ_* and COLUMNS/LINES, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GRAFTQ_") and key not in {"COLUMNS", "LINES"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python -m graftq.cli ARGS` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "graftq.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.getcwd(),
        check=False,
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in output(proc), output(proc)


CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(redis_url: str) -> dict[str, str]:
    return clean_env(GRAFTQ_REDIS_URL=redis_url)


@pytest.fixture
def cli(cli_env: dict[str, str]) -> CLI:
    """Run the CLI on the test's store: `cli("show", id, wide=True)`."""

    def invoke(*args: str, wide: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**cli_env, **extra}
        if wide:
            env["COLUMNS"] = WIDE
        return run_cli(*args, env=env)

    return invoke


@pytest.fixture
def school(make_school: Callable[..., App]) -> App:
    """An in-process tests.apps.school App on the test's store (for setup and checks)."""
    return make_school()


@dataclass
class Ada:
    """A stored Student with three versions: v1 -> v2 -> v3 (head)."""

    lineage_id: str
    versions: list[str]
    address_id: str

    @property
    def head(self) -> str:
        return self.versions[-1]


@pytest.fixture
def ada(school: App) -> Iterator[Ada]:
    store = school.entities
    first = store.put(Student(name="Ada", age=20, major="math", address=Address(city="Paris")))
    second = store.put(first.model_copy(update={"age": 21}))
    third = store.put(second.model_copy(update={"major": "physics"}))
    assert first.address is not None
    yield Ada(
        lineage_id=str(first.lineage_id),
        versions=[str(first.ecs_id), str(second.ecs_id), str(third.ecs_id)],
        address_id=str(first.address.ecs_id),
    )
