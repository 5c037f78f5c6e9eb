"""Celery's result of a graftq job, written by the transaction that commits the job.

Celery stores a task's SUCCESS after the task returned: it reads the task's current
state (so that a late duplicate never overwrites a success), then writes the result
and publishes it — two more round trips after graftq's commit. A job's Celery result
is only its execution id and output version ids (`celery_result`), which the commit
knows. So when the result backend is the store's own Redis, the commit's
MULTI...EXEC also writes Celery's result (`in_commit`: the document, key, expiry and
publication Celery's Redis backend would write), and `RedisBackend` skips Celery's
own write of that SUCCESS. The result is then stored exactly when the job's versions
are, never one without the other, and a waiting `Job.get` or `AsyncResult.get` hears
of it the same way. A job that replayed an earlier commit, a memoized one, a failure,
STARTED, and any result backend elsewhere are stored by Celery as usual.

Selected for ``redis://`` and ``rediss://`` result backends (`graftq.worker.config`).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend

from graftq.registry.commit import Also
from graftq.registry.execution import Execution

SCHEMES = ("redis", "rediss")
_STORED = "graftq_result_stored"  # on the task's request: the task id whose result is stored


def celery_result(execution: Execution) -> dict[str, Any]:
    """What Celery's result backend keeps of a job: how to find its result in the store."""
    return {"execution_id": execution.id, "outputs": execution.outputs}


class RedisBackend(CeleryRedisBackend):  # type: ignore[misc]  # Celery has no type hints
    """Celery's Redis result backend, but for a SUCCESS the job's commit already stored."""

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if state == states.SUCCESS and getattr(request, _STORED, None) == task_id:
            return result
        return super().store_result(
            task_id, result, state, traceback=traceback, request=request, **kwargs
        )


def in_commit(backend: Any, request: Any) -> Also | None:
    """The commands that store `request`'s SUCCESS in its commit; None if Celery must.

    `backend` must be a `RedisBackend` on the store's Redis (the caller knows the URLs).
    """
    if not isinstance(backend, RedisBackend) or not isinstance(request.id, str):
        return None

    def commands(execution: Execution) -> list[tuple[Any, ...]]:
        # As Celery's `_store_result` and the Redis backend's `_set` would write it
        meta = backend._get_result_meta(
            result=celery_result(execution), state=states.SUCCESS, traceback=None, request=request
        )
        meta["task_id"] = request.id
        value = backend.encode(meta)
        key = backend.get_key_for_task(request.id)
        expiry = ("EX", backend.expires) if backend.expires else ()
        return [("SET", key, value, *expiry), ("PUBLISH", key, value)]

    return commands


def mark_stored(request: Any) -> None:
    """Tell `RedisBackend` that this request's SUCCESS is stored (its commit wrote it)."""
    setattr(request, _STORED, request.id)
