"""The Celery task wrapper: thin — load inputs, run isolated, commit (all in `tasks.runner`).

Every callable becomes the task ``graftq.<name>`` (its message: `message`). The
Celery task id is the execution id, which makes the commit idempotent per delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.serialization import UnpickleableExceptionWrapper, ensure_serializable
from celery.worker.request import Request

from graftq.errors import InvalidInput, InvalidResult, TimeLimitExceeded
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo, identifier
from graftq.tasks.isolation import Zygote
from graftq.tasks.runner import Call, local_worker, run_call
from graftq.worker import backend, logs
from graftq.worker.config import BACKSTOP
from graftq.worker.guard import GUARDED_STRATEGY
from graftq.worker.message import (
    META,
    PUBLISHED_TASK,
    TASK_PREFIX,
    input_of,
    task_name,
    through_json,
)

log = logging.getLogger(__name__)


def run_job(
    store: EntityRegistry,
    info: CallableInfo,
    settings: Settings,
    request: Any,
    input_data: dict[str, Any],
    *,
    zygote: Zygote | None = None,
    result_backend: Any = None,
) -> dict[str, Any]:
    """Run one delivery of a job; the JSON the result backend keeps.

    With the Celery app's `result_backend` on the store's Redis, the job writes its
    STARTED and SUCCESS there itself (`graftq.worker.backend`).
    """
    own = backend.own_states(result_backend, settings, request)
    call = Call(
        execution_id=str(request.id),
        worker=str(request.hostname or "unknown"),
        rerun_timeout=settings.rerun_timeout,
        reconnect_timeout=settings.connect_timeout,
        check_replay=True,
        zygote=zygote,
        also=None if own is None else own.success,
        announce=None if own is None else own.started,
    )
    try:
        with logs.job(
            info.name, call.execution_id, lambda: store.execution(call.execution_id)
        ) as summary:
            ran = run_call(store, info, input_data, call)
            summary.execution = ran.execution
    except InvalidResult:  # its body ran: not its input, it was what it returned
        raise
    except pydantic.ValidationError as exc:
        raise InvalidInput(str(exc), _errors(exc), exc.title) from None
    except SoftTimeLimitExceeded:
        raise TimeLimitExceeded(
            f"job {request.id} ({info.name}) hit Celery's soft time limit; its child was killed"
        ) from None
    if ran.committed and own is not None:
        backend.mark_stored(request)
    # The result itself lives once, in the Execution record; Celery keeps how to find it.
    return backend.celery_result(ran.execution)


def _errors(exc: pydantic.ValidationError) -> Any:
    return pydantic.TypeAdapter(Any).dump_python(
        exc.errors(include_url=False), mode="json", fallback=repr
    )


# The message of a job: (task id, worker node name, args, kwargs).
Message = tuple[str, str, tuple[Any, ...], dict[str, Any]]
# (task, exception, message, replace): `record_failed_job` on the App's store.
Failed = Callable[[Any, BaseException, Message, bool], None]


def record_failed_job(
    store: EntityRegistry,
    task: Any,
    exc: BaseException,
    job: Message,
    *,
    replace: bool = False,
) -> None:
    """A FAILURE Execution for a job that failed before `run_call` recorded one (refused
    input or signature; the task records it before Celery stores the failure), or that
    Celery's hard time limit killed (the worker's main process records it then, and that
    record replaces whatever the killed process wrote). Best effort: never raises.

    `job` is (task id, worker node name, args, kwargs) of the message.
    """
    task_id, worker, args, kwargs = job
    try:
        # Only a published function's job names itself in `_graftq`; any other task is
        # what its name says, whatever a client put there.
        published = task.name == PUBLISHED_TASK and isinstance(kwargs.get(META), dict)
        meta = kwargs[META] if published else {}
        name = str(meta.get("name") or task.name.removeprefix(TASK_PREFIX))
        try:
            given: Any = input_of(args, kwargs)
        except InvalidInput:
            given = {}
        now = datetime.now(UTC)
        failed = Execution(
            id=task_id,
            callable=name,
            callable_version=str(meta.get("version") or getattr(task, "graftq_version", "?")),
            inputs=given if isinstance(given, dict) else {},
            status=ExecutionStatus.FAILURE,
            started_at=now,
            finished_at=now,
            worker=worker or local_worker(),
            error=f"{type(exc).__name__}: {exc}",
        )
        store.record_failure(failed, replace=replace)
    except Exception:
        log.warning("no record of failed job %s", task_id, exc_info=True)


class HardLimitRequest(Request):  # type: ignore[misc]  # Celery has no type hints
    """Celery's request, recording a hard time limit's FAILURE before Celery reports it.

    The worker's main process handles a hard limit (the pool process is killed); Celery
    stores the failed result first and calls the task's hooks after, so a client could
    see the failure before its Execution. Here the record comes first.
    """

    def on_timeout(self, soft: bool, timeout: float) -> None:
        recorder = getattr(self.task, "graftq_failed", None)
        if not soft and recorder is not None:
            exc = TimeLimitExceeded(f"Celery's hard time limit ({timeout} s) killed the job")
            job = (self.id, str(self.hostname or ""), tuple(self.args), dict(self.kwargs))
            recorder(self.task, exc, job, True)
        super().on_timeout(soft, timeout)


def _recorded(failed: Failed, run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The task function `run`, recording a failure before Celery stores it."""

    def task(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return run(self, *args, **kwargs)
        except Exception as exc:
            failed(
                self, exc, (self.request.id, str(self.request.hostname or ""), args, kwargs), False
            )
            carried = _carried(exc)
            if carried is exc:
                raise
            raise carried from exc

    return task


def _carried(exc: Exception) -> Exception:
    """`exc`, or what Celery's JSON result brings back to `Job.get` as `exc` again.

    Celery stores a failed job's exception as its type's name and its args in JSON, and a
    client makes it again as ``type(*args)`` — a bare ``Exception`` if that call fails. An
    exception that pickle carries but its args, as JSON brings them back, do not make
    again (json's JSONDecodeError wants its document and position too; an OSError's
    message names a file its args do not hold; a tuple in the args comes back a list) is
    sent as Celery's `UnpickleableExceptionWrapper` of its type's name and message
    instead, as Celery itself sends one pickle cannot carry, and `Job.get` makes it again
    from those (`graftq.tasks.exceptions.rebuilt`). Only a failed job pays this.
    """
    kind = type(exc)
    try:
        message = str(exc)
    except Exception:  # a message that cannot be told: left to Celery
        return exc
    try:  # the args as Celery's JSON result backend gives them back
        again = kind(*through_json(ensure_serializable(exc.args, through_json)))
        if type(again) is kind and str(again) == message:
            return exc
    except Exception:
        pass
    wrapper: Exception = UnpickleableExceptionWrapper(
        kind.__module__, kind.__qualname__, [message], message
    )
    return wrapper


def bind_published(
    celery: Any,
    job: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]],
    failed: Failed,
    *,
    track_started: bool = True,
) -> Any:
    """The one task that runs published functions; name and version come in `_graftq`.

    `track_started` False: the job writes its STARTED itself (`graftq.worker.backend`).
    """

    def published(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        meta = kwargs.get(META) or {}
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise InvalidInput(f"a {PUBLISHED_TASK} job needs {META}={{'name': ...}}")
        return job(self.request, input_of(args, kwargs), meta)

    return celery.task(name=PUBLISHED_TASK, **_options(failed, track_started))(
        _recorded(failed, published)
    )


def bind(
    celery: Any,
    info: CallableInfo,
    job: Callable[[CallableInfo, Any, dict[str, Any]], dict[str, Any]],
    failed: Failed,
    *,
    track_started: bool = True,
) -> Any:
    """Make `info` a Celery task named ``graftq.<name>`` that calls `job` (`track_started`
    as in `bind_published`)."""

    def run(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return job(info, self.request, input_of(args, kwargs, info.parameters()))

    task = _recorded(failed, run)
    task.__name__ = task.__qualname__ = identifier(info.name)
    task.__doc__ = (info.func.__doc__ or "").strip() or f"graftq callable {info.name}"
    limit = info.time_limit + BACKSTOP if info.time_limit else None
    return celery.task(
        name=task_name(info.name),
        graftq_version=info.version,
        time_limit=limit,
        **_options(failed, track_started),
    )(task)


def _options(failed: Failed, track_started: bool) -> dict[str, Any]:
    """The Celery task options every graftq task has."""
    return {
        "bind": True,
        "track_started": track_started,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "typing": False,
        "shared": False,  # a task belongs to its App's Celery: two Apps may share names
        "Strategy": GUARDED_STRATEGY,  # a message too deep for the pool fails its job only
        "Request": HardLimitRequest,
        "graftq_failed": staticmethod(failed),
    }
