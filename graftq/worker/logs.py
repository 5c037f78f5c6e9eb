"""Job logging: every line a job logs names its callable and execution id.

While a job runs (in the pool process, and in the isolated child forked from
it), every log record gets the attributes ``graftq_callable`` and
``graftq_execution_id`` (for custom formats, e.g. JSON logs), and its message
is prefixed with ``callable[execution id]`` unless it names the id already —
Celery's own lines say ``graftq.<callable>[<id>]``, and its task logger's
format adds the same. Printed output reaches the log through Celery's
stdout redirection, so it is tagged too.

When the job ends, the logger ``graftq.job`` writes one INFO line::

    birthday[<execution id>] SUCCESS outputs=<ecs_id>,<ecs_id> attempts=1 duration=0.021s
    fail[<execution id>] FAILURE error="ValueError: boom" outputs=- attempts=1 duration=0.018s

and ``INTERRUPTED`` instead of ``FAILURE`` when the pool process itself is being ended
(``revoke(terminate=True)``, a cold shutdown): that job did not fail.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from graftq.registry.execution import Execution

log = logging.getLogger("graftq.job")

_JOB: ContextVar[tuple[str, str] | None] = ContextVar("graftq_job", default=None)
_TAGGED_BY_CELERY = "celery.task"  # its TaskFormatter adds task_name[task_id] itself
_installed: list[Callable[..., logging.LogRecord]] = []


def _tagging_factory(previous: Callable[..., logging.LogRecord]) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        job = _JOB.get()
        if job is None:
            return record
        callable_name, execution_id = job
        record.graftq_callable = callable_name
        record.graftq_execution_id = execution_id
        if record.name == _TAGGED_BY_CELERY or record.name.startswith(_TAGGED_BY_CELERY + "."):
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let logging report it as it would
            return record
        if execution_id not in message:
            record.msg, record.args = f"{callable_name}[{execution_id}] {message}", None
        return record

    return make


def install() -> None:
    """Tag the records of this process's jobs (once per process; idempotent)."""
    if not _installed:
        _installed.append(logging.getLogRecordFactory())
        logging.setLogRecordFactory(_tagging_factory(_installed[0]))


@dataclass
class Summary:
    """What the job's summary line reports; the task fills in `execution` on success."""

    execution: Execution | None = None


@contextlib.contextmanager
def job(
    callable_name: str, execution_id: str, recorded: Callable[[], Execution | None]
) -> Iterator[Summary]:
    """Tag the log lines of the block with the job, then log its summary line.

    `recorded` returns the job's Execution record, read only when the block
    raised (it holds the attempts of a failed run).
    """
    install()
    token = _JOB.set((callable_name, execution_id))
    started = time.monotonic()
    summary = Summary()
    try:
        yield summary
    except (SystemExit, KeyboardInterrupt) as exc:
        # The process is being ended (revoke with terminate, a cold shutdown): the job
        # did not fail; Celery reports it REVOKED or delivers it again.
        error = f"{type(exc).__name__}: {exc}"
        _summarize(callable_name, execution_id, "INTERRUPTED", None, started, error)
        raise
    except BaseException as exc:
        execution = _quietly(recorded)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        _summarize(callable_name, execution_id, "FAILURE", execution, started, error)
        raise
    else:
        _summarize(callable_name, execution_id, "SUCCESS", summary.execution, started, None)
    finally:
        _JOB.reset(token)


def _summarize(
    callable_name: str,
    execution_id: str,
    outcome: str,
    execution: Execution | None,
    started: float,
    error: str | None,
) -> None:
    failed = f' error="{error}"' if error is not None else ""
    outputs = ",".join(execution.outputs) if execution and execution.outputs else "-"
    attempts = execution.attempts if execution else "?"
    reused = ""
    if execution is not None and execution.id != execution_id:
        reused = f" cached_from={execution.id}"  # a memoized result of an earlier run
    log.info(
        "%s[%s] %s%s outputs=%s attempts=%s duration=%.3fs%s",
        callable_name,
        execution_id,
        outcome,
        failed,
        outputs,
        attempts,
        time.monotonic() - started,
        reused,
    )


def _quietly(read: Callable[[], Execution | None]) -> Execution | None:
    try:
        return read()
    except Exception:  # the summary must not hide the job's own error
        return None
