"""The school app plus callables that take loosely typed input, for hostile-input tests.

`graftq worker --app tests.apps.hostile:app`; `make_app()` builds a fresh one.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from graftq import App
from tests.apps.school import Student
from tests.apps.school import make_app as make_school


def leave_orphan(pid_file: str) -> int:
    """Double-fork a process that leaves the session (setsid); its pid, once it wrote it."""
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        Path(pid_file + ".tmp").write_text(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        time.sleep(600)
        os._exit(0)
    os.waitpid(first, 0)
    while not Path(pid_file).exists():
        time.sleep(0.01)
    return int(Path(pid_file).read_text())


def leave_hopper(count_file: str) -> None:
    """Detach (setsid) a process that keeps changing its pid: it forks, its parent exits,
    the child goes on. Each one appends its pid to `count_file`, as fast as it can; their
    common process group is in `count_file`.pgid (a test kills what is left with killpg).
    Returns once the first one wrote."""
    first = os.fork()
    if first == 0:
        os.setsid()
        Path(count_file + ".pgid").write_text(str(os.getpgrp()))
        while True:
            if os.fork():
                os._exit(0)
            with open(count_file, "a") as out:
                out.write(f"{os.getpid()}\n")
    os.waitpid(first, 0)
    while not Path(count_file).exists():
        time.sleep(0.01)


def make_app(name: str = "school") -> App:
    app = make_school(name)

    @app.register
    def orphan_and_wait(pid_file: str) -> int:
        leave_orphan(pid_file)
        time.sleep(600)
        return 0

    @app.register
    def deep(value: dict) -> int:  # type: ignore[type-arg]
        return len(value)

    @app.register
    def anything(value: Any) -> str:
        return type(value).__name__

    @app.register
    def anything_object(value: object) -> str:
        return type(value).__name__

    @app.register
    def enroll(student: Student, extra: Any) -> str:
        return f"{student.name}:{type(extra).__name__}"

    @app.register
    def mark(marker_file: str, extra: Any) -> int:
        Path(marker_file).write_text("ran")
        return 1

    @app.register
    def when(at: datetime) -> str:
        return at.isoformat()

    @app.register
    def tag_count(tags: set[int]) -> int:
        return len(tags)

    return app


app = make_app()
