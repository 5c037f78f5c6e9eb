"""Celery's states of a graftq job, written in the job's own round trips to the store.

Celery stores a task's STARTED before the task runs and its SUCCESS after it returned,
each as a read of the current state (so that a late duplicate never overwrites a
success), then a write and its publication: four round trips on top of graftq's own.
When the result backend is the store's own Redis (`in_store`), graftq writes both
documents (`own_states`) — the same document, key, expiry and publication Celery's
Redis backend would — in round trips the job makes anyway:

* STARTED in the job's first read (the replay check and input load),
  unless the stored state already says SUCCESS; the job's task then does not track
  its start through Celery;
* SUCCESS in the MULTI...EXEC that commits the job, so the result is
  stored exactly when the job's versions are, never one without the other, and
  `RedisBackend` skips Celery's own write of it.

A waiting `Job.get` or `AsyncResult.get` hears of the result the same way. A job that
replayed an earlier commit, a memoized one, a failure, and any result backend
elsewhere are stored by Celery as usual. `RedisBackend` is selected for ``redis://``
and ``rediss://`` result backends (`graftq.worker.config`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend

from graftq.registry.commit import Also
from graftq.registry.execution import Execution
from graftq.registry.store import Announcement
from graftq.settings import Settings
from graftq.worker.connections import reachable

SCHEMES = ("redis", "rediss")
_STORED = "graftq_result_stored"  # on the task's request: the task id whose result is stored
_SETTINGS = "graftq_settings"  # on the Celery app (`bind`)


def handles(url: str) -> bool:
    """Whether `RedisBackend` is the result backend for `url` (`graftq.worker.config`)."""
    return urlsplit(url).scheme in SCHEMES


def in_store(settings: Settings) -> bool:
    """Whether Celery's results live in the store's Redis, so a job may write its own."""
    return handles(settings.backend) and settings.backend == settings.redis_url


def celery_result(execution: Execution) -> dict[str, Any]:
    """What Celery's result backend keeps of a job: how to find its result in the store."""
    return {"execution_id": execution.id, "outputs": execution.outputs}


def bind(celery_app: Any, settings: Settings) -> None:
    """Give `celery_app`'s `RedisBackend` the settings its errors name (`reachable`)."""
    setattr(celery_app, _SETTINGS, settings)  # not in its conf, which Flower shows as JSON


class RedisBackend(CeleryRedisBackend):  # type: ignore[misc]  # Celery has no type hints
    """Celery's Redis result backend, but for a SUCCESS the job's commit already stored,
    and a result it cannot store for a server gone away is an `Unreachable` naming it.

    A job that failed because its commit could not reach Redis (`Unreachable`) cannot
    store that failure either; Celery then reports the redis-py error of that write as
    the job's failure, and the worker's main process stores it once the server is back,
    so `Job.get` raised a bare ``ConnectionError``: it is the `Unreachable` now.
    """

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
        settings = getattr(self.app, _SETTINGS, None)
        with reachable(settings) if settings is not None else contextlib.nullcontext():
            return super().store_result(
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )


class OwnStates(NamedTuple):
    """What a job writes for Celery itself: STARTED in its first read, SUCCESS in its commit."""

    started: Announcement
    success: Also


def own_states(backend: Any, settings: Settings, request: Any) -> OwnStates | None:
    """`request`'s STARTED and SUCCESS, as Celery would store them, for the job to write in
    its own round trips; None if Celery must store them (results elsewhere)."""
    if not (in_store(settings) and isinstance(backend, RedisBackend)):
        return None
    if not isinstance(request.id, str):
        return None
    # the tracer's own STARTED result: the pool process and the worker's node name
    running = {"pid": os.getpid(), "hostname": request.hostname}
    key, value = _document(backend, request, states.STARTED, running)
    expires = backend.expires or None

    def success(execution: Execution) -> list[tuple[Any, ...]]:
        key, value = _document(backend, request, states.SUCCESS, celery_result(execution))
        expiry = ("EX", expires) if expires else ()
        return [("SET", key, value, *expiry), ("PUBLISH", key, value)]

    return OwnStates(Announcement(key, value, expires), success)


def _document(backend: Any, request: Any, state: str, result: Any) -> tuple[str, str]:
    """Key and document of `request`'s `state`, as Celery's `_store_result` makes them."""
    meta = backend._get_result_meta(result=result, state=state, traceback=None, request=request)
    meta["task_id"] = request.id
    key = backend.get_key_for_task(request.id)
    return key.decode() if isinstance(key, bytes) else key, backend.encode(meta)


def mark_stored(request: Any) -> None:
    """Tell `RedisBackend` that this request's SUCCESS is stored (its commit wrote it)."""
    setattr(request, _STORED, request.id)
