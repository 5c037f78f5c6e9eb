"""The school app with env-controlled crashes of a pool process after a job's commit.

For the exactly-once tests only; `graftq worker --app tests.apps.faulty:app`.

* ``GRAFTQ_TEST_CRASH_AFTER_COMMIT=<marker path>``: the first ``increment`` delivery
  that finds no marker file creates it and ends its pool process with ``os._exit(1)``
  right after the task body returned — the commit is in Redis, but Celery has neither
  stored the result nor acked the message, so the message is redelivered and only
  graftq's per-execution idempotency can prevent a second commit.
* ``GRAFTQ_TEST_CRASH_AFTER_RESULT=<marker path>``: the same from Celery's
  ``task_postrun`` signal, i.e. after Celery stored the result, before the ack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery.signals import task_postrun

from tests.apps.school import make_app

CRASH_AFTER_COMMIT = "GRAFTQ_TEST_CRASH_AFTER_COMMIT"
CRASH_AFTER_RESULT = "GRAFTQ_TEST_CRASH_AFTER_RESULT"
TASK = "graftq.increment"

app = make_app()


def _crash_once(variable: str) -> None:
    marker = os.environ.get(variable)
    if not marker or Path(marker).exists():
        return
    Path(marker).write_text(str(os.getpid()))
    os._exit(1)


_task = app.celery.tasks[TASK]
_run = _task.run


def _run_then_crash(*args: Any, **kwargs: Any) -> Any:
    result = _run(*args, **kwargs)
    _crash_once(CRASH_AFTER_COMMIT)
    return result


# The worker builds each task's tracer from `task.run` in every pool process, after
# this module was imported, so the wrapper is what runs.
_task.run = _run_then_crash


def _crash_after_result(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == TASK:
        _crash_once(CRASH_AFTER_RESULT)


task_postrun.connect(_crash_after_result, weak=False)
