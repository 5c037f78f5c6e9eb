"""Waiting for jobs on the command line: a spinner on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from graftq.errors import JobTimeout
from graftq.worker.job import Job

POLL = 0.1  # seconds between looks at the jobs' states


def wait(job: Job, console: Console, *, timeout: float | None = None) -> Any:
    """`job.get(timeout)`, showing the job's state while it runs.

    On a terminal a rich spinner shows the state and the time waited; when the
    output is not a terminal each change of state is one plain line. Either way
    a last line gives the outcome and the time.
    """
    label = f"{job.name} job {job.id}"
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    _watch(console, label, lambda: job.status, lambda: job.done, deadline)
    try:
        if not job.done:
            raise JobTimeout(
                f"job {job.id} ({job.name}) did not finish within {timeout}s; status {job.status}"
            )
        return job.get(timeout=_left(deadline))
    finally:
        console.print(
            f"{label}: {job.status} after {time.monotonic() - started:.1f}s", highlight=False
        )


def wait_all(jobs: list[Job], console: Console, *, timeout: float) -> list[Any]:
    """Every job's result, in order, showing how many are done while they run."""
    label = f"{len(jobs)} {jobs[0].name if jobs else ''} jobs"
    started = time.monotonic()
    deadline = started + timeout

    def count() -> str:
        return f"{sum(job.done for job in jobs)} done"

    console.print(f"{label}: waiting")
    _watch(console, label, count, lambda: all(job.done for job in jobs), deadline)
    values = [job.get(timeout=_left(deadline)) for job in jobs]
    console.print(f"{label}: all done after {time.monotonic() - started:.1f}s", highlight=False)
    return values


def _watch(
    console: Console,
    label: str,
    state: Callable[[], str],
    finished: Callable[[], bool],
    deadline: float | None,
) -> None:
    """Until `finished()` or the deadline: a spinner showing `state()`, or a line per change."""
    started = time.monotonic()

    def waiting() -> bool:
        return not finished() and (deadline is None or time.monotonic() < deadline)

    if console.is_terminal:
        with console.status(f"{label}: {state()}") as spinner:
            while waiting():
                time.sleep(POLL)
                spinner.update(f"{label}: {state()} ({time.monotonic() - started:.1f}s)")
        return
    shown = state()  # what the caller just said (submitted, or waiting)
    while waiting():
        now = state()
        if now != shown:
            console.print(f"{label}: {now}", highlight=False)
            shown = now
        time.sleep(POLL)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)
