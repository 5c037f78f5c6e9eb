"""The worker's guard: a message no job can come of fails that job before the pool sees it.

A prefork worker's main process decodes each message and pickles its arguments to
a pool process. A message nested a few hundred levels deep makes that pickling
raise RecursionError in the main process, which ends the worker; with late acks
the message is redelivered and ends the next worker too. So every graftq task
uses `guarded_strategy` (Celery's documented `Task.Strategy` hook; the later
`Task.Request` hook comes too late, since the default strategy already decodes
the body, and a body that is a bare number even makes it raise TypeError). It
decodes the message first and checks its shape and depth. A
message that does not decode, is not ``[args, kwargs, embed]`` or nests deeper
than the input bound allows is marked FAILURE with `InvalidInput` in the result
backend (so `Job.get` raises it and Flower shows it), and then refused the way
Celery refuses a message with a bad ETA: `InvalidTaskError`, which makes the
consumer log it and reject it without requeue, i.e. drop it. The worker serves on.

Everything a message can carry is checked without recursion
(`graftq.tasks.bounds.depth_exceeds`), so the check cannot overflow either.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.utils.objects import Bunch
from celery.worker.strategy import default as default_strategy

from graftq.errors import InvalidInput
from graftq.tasks.bounds import MAX_DEPTH, depth_exceeds

log = logging.getLogger(__name__)

# A parameter value sits at most four containers below the body: body → kwargs →
# "_graftq" → "resolved" → value (body → args → input → value is one less).
BODY_DEPTH = MAX_DEPTH + 4
HEADER_DEPTH = MAX_DEPTH
# By name, as Celery gives its own default: a function set as a class attribute would bind.
GUARDED_STRATEGY = f"{__name__}:guarded_strategy"


def refusal(message: Any, headers: Any, body: Any = None) -> InvalidInput | None:
    """Why this message cannot become a job, or None if it can (`body`: decoded already)."""
    try:
        payload = message.payload if body is None else body
    except Exception as exc:  # ContentDisallowed, DecodeError, RecursionError in the decoder
        return InvalidInput(f"the message does not decode: {type(exc).__name__}: {exc!s:.200}")
    if isinstance(payload, dict):  # protocol 1: Celery checks its shape itself
        pass
    elif not (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict | None)
    ):
        return InvalidInput(
            f"the message body is not a Celery task body [args, kwargs, embed]: {payload!r:.200}"
        )
    if depth_exceeds(payload, BODY_DEPTH) or depth_exceeds(headers, HEADER_DEPTH):
        return InvalidInput(
            f"the message nests deeper than a job's input may ({MAX_DEPTH} containers); "
            "graftq refuses it so that no worker can be overflowed"
        )
    return None


def guarded_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy for `task`, behind `refusal` (the task's `Strategy`)."""
    handle = default_strategy(task, app, consumer, **options)
    eventer = consumer.event_dispatcher

    def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        refused = refusal(message, message.headers, body)
        if refused is not None:
            _fail(message, task, refused, eventer)
            raise InvalidTaskError(str(refused))
        return handle(message, body, *args, **kwargs)

    return on_message


def _fail(message: Any, task: Any, exc: InvalidInput, eventer: Any) -> None:
    """Record the job as failed with `exc` (as Celery does for an unknown task name)."""
    headers = message.headers
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str):
        return  # no job to fail: the consumer still drops the message
    request = Bunch(
        name=task.name,
        chord=None,
        root_id=headers.get("root_id"),
        correlation_id=message.properties.get("correlation_id"),
        reply_to=message.properties.get("reply_to"),
        errbacks=None,
    )
    try:
        task.backend.mark_as_failure(task_id, exc, request=request)
        if eventer is not None and eventer.enabled:
            eventer.send("task-failed", uuid=task_id, exception=repr(exc))
    except Exception:  # e.g. the backend is down: the refusal itself must still go through
        log.exception("could not record job %s as failed", task_id)
