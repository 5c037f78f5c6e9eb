"""The Celery task wrapper: thin — load inputs, run isolated, commit (all in `tasks.runner`).

Every callable becomes the task ``graftq.<name>``. Its message is the same
input JSON that `submit` takes, as the first positional argument (or, for
clients such as Flower's send-task form, as the keyword arguments); a published
function's job adds ``_graftq``: its name and version. The Celery task id is the
execution id, which makes the commit idempotent per delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic
from celery.exceptions import SoftTimeLimitExceeded

from graftq.errors import InvalidInput, TimeLimitExceeded
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo
from graftq.tasks.runner import Call, run_call
from graftq.worker import logs
from graftq.worker.config import BACKSTOP
from graftq.worker.guard import GUARDED_STRATEGY

TASK_PREFIX = "graftq."
PUBLISHED_TASK = "graftq.published"
META = "_graftq"
INPUT_KEYWORD = "input_data"  # parameter names cannot start with "_", so this never clashes


def task_name(callable_name: str) -> str:
    return TASK_PREFIX + callable_name


def input_of(
    args: tuple[Any, ...], kwargs: dict[str, Any], parameters: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The job's input: the first positional argument, else the keyword arguments.

    ``kwargs={"input_data": {...}}`` (the name `submit` gives it) is unwrapped
    too, unless the callable has a parameter of that name.
    """
    kwargs = {key: value for key, value in kwargs.items() if key != META}
    wrapped = kwargs.get(INPUT_KEYWORD)
    if set(kwargs) == {INPUT_KEYWORD} and isinstance(wrapped, dict) and not args:
        if INPUT_KEYWORD not in parameters:
            return wrapped
    if args:
        if len(args) != 1 or not isinstance(args[0], dict) or kwargs:
            raise InvalidInput(
                "a graftq job takes one positional argument (the input dict) "
                f"or keyword arguments, got args={args!r:.200} kwargs={kwargs!r:.200}"
            )
        return args[0]
    return kwargs


def run_job(
    store: EntityRegistry,
    info: CallableInfo,
    settings: Settings,
    request: Any,
    input_data: dict[str, Any],
) -> dict[str, Any]:
    """Run one delivery of a job; the JSON the result backend keeps."""
    call = Call(
        execution_id=str(request.id),
        worker=str(request.hostname or "unknown"),
        rerun_timeout=settings.rerun_timeout,
        check_replay=True,
    )
    try:
        with logs.job(
            info.name, call.execution_id, lambda: store.execution(call.execution_id)
        ) as summary:
            ran = run_call(store, info, input_data, call)
            summary.execution = ran.execution
    except pydantic.ValidationError as exc:
        raise InvalidInput(str(exc), _errors(exc), exc.title) from None
    except SoftTimeLimitExceeded:
        raise TimeLimitExceeded(
            f"job {request.id} ({info.name}) hit Celery's soft time limit; its child was killed"
        ) from None
    execution = ran.execution
    # The result itself lives once, in the Execution record; Celery keeps how to find it.
    return {"execution_id": execution.id, "outputs": execution.outputs}


def _errors(exc: pydantic.ValidationError) -> Any:
    return pydantic.TypeAdapter(Any).dump_python(
        exc.errors(include_url=False), mode="json", fallback=repr
    )


def bind_published(
    celery: Any, job: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]]
) -> Any:
    """The one task that runs published functions; name and version come in `_graftq`."""

    def published(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        meta = kwargs.get(META) or {}
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise InvalidInput(f"a {PUBLISHED_TASK} job needs {META}={{'name': ...}}")
        return job(self.request, input_of(args, kwargs), meta)

    return celery.task(
        name=PUBLISHED_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        typing=False,
        shared=False,  # the task belongs to this App's Celery only
        Strategy=GUARDED_STRATEGY,  # a message too deep for the pool fails its job, not the worker
    )(published)


def bind(
    celery: Any,
    info: CallableInfo,
    job: Callable[[CallableInfo, Any, dict[str, Any]], dict[str, Any]],
) -> Any:
    """Make `info` a Celery task named ``graftq.<name>`` that calls `job`."""

    def task(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return job(info, self.request, input_of(args, kwargs, info.parameters()))

    task.__name__ = task.__qualname__ = info.name
    task.__doc__ = (info.func.__doc__ or "").strip() or f"graftq callable {info.name}"
    limit = info.time_limit + BACKSTOP if info.time_limit else None
    return celery.task(
        name=task_name(info.name),
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        time_limit=limit,
        typing=False,
        shared=False,  # two Apps in one process must not share task names
        Strategy=GUARDED_STRATEGY,  # a message too deep for the pool fails its job, not the worker
    )(task)
