"""Waiting for a job on the command line: a spinner on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from graftq.worker.job import Job

POLL = 0.1  # seconds between looks at the job's state


def wait(job: Job, console: Console, *, timeout: float | None = None) -> Any:
    """`job.get(timeout)`, showing the job's state while it runs.

    On a terminal a rich spinner shows the state and the time waited; when the
    output is not a terminal each new state is one plain line. Either way one
    line with the outcome and the time is printed at the end.
    """
    label = f"{job.name} job {job.id}"
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout

    def waiting() -> bool:
        return not job.done and (deadline is None or time.monotonic() < deadline)

    if console.is_terminal:
        with console.status(f"{label}: {job.status}") as spinner:
            while waiting():
                time.sleep(POLL)
                spinner.update(f"{label}: {job.status} ({time.monotonic() - started:.1f}s)")
    else:
        shown = None
        while waiting():
            state = job.status
            if state != shown:
                console.print(f"{label}: {state}")
                shown = state
            time.sleep(POLL)
    left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        value = job.get(timeout=left)
    finally:
        console.print(f"{label}: {job.status} after {time.monotonic() - started:.1f}s")
    return value
