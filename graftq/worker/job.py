"""Submitting jobs and waiting for them: `submit` and `Job`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import celery.exceptions
import pydantic_core

from graftq.errors import InvalidInput, JobTimeout, TimeLimitExceeded
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks import results
from graftq.tasks.callables import CallableInfo
from graftq.tasks.inputs import prepare
from graftq.worker.connections import reachable
from graftq.worker.task import META


class JobStatus(StrEnum):
    """Celery's state names, as `Job.status` reports them."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED})


class Job:
    """A submitted job. `id` is the Celery task id, which is also the execution id."""

    def __init__(
        self,
        result: Any,
        info: CallableInfo,
        store: Callable[[], EntityRegistry],
        settings: Settings,
    ) -> None:
        self._result = result
        self._info = info
        self._store = store
        self._settings = settings

    def __repr__(self) -> str:
        return f"<graftq.Job {self.id} {self._info.name} {self.status}>"

    @property
    def id(self) -> str:
        return str(self._result.id)

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def status(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE (or REVOKED)."""
        with reachable(self._settings):
            return str(self._result.state)

    @property
    def done(self) -> bool:
        """True once the job reached a terminal state."""
        return self.status in TERMINAL

    def get(self, timeout: float | None = None) -> Any:
        """The typed result, entities loaded at their committed versions.

        Re-raises the function's exception (its own type when importable here);
        `JobTimeout` after `timeout` seconds.
        """
        try:
            with reachable(self._settings):
                payload = self._result.get(timeout=timeout, propagate=True)
        except celery.exceptions.TimeoutError:
            # Celery keeps a waited-on result alive until it resolves; let go of it
            # (a later get() registers it again) so nothing lingers past shutdown.
            self._result.backend.remove_pending_result(self._result)
            raise JobTimeout(
                f"job {self.id} ({self._info.name}) did not finish within {timeout}s; "
                f"status {self.status}"
            ) from None
        except celery.exceptions.TimeLimitExceeded as exc:
            raise TimeLimitExceeded(
                f"job {self.id} ({self._info.name}) hit Celery's time limit: {exc}"
            ) from None
        except InvalidInput as exc:
            raise _validation_error(exc) from None
        with reachable(self._settings):
            return results.replay(self._store(), self._info, payload["result"], payload["outputs"])

    async def aget(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        """`get` without blocking the event loop (polls the result backend)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.005
        while not await asyncio.to_thread(lambda: self.done):
            if deadline is not None and loop.time() >= deadline:
                raise JobTimeout(
                    f"job {self.id} ({self._info.name}) did not finish within {timeout}s; "
                    f"status {self.status}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll)
        return await asyncio.to_thread(self.get, 5.0)


def _validation_error(exc: InvalidInput) -> Exception:
    """Pydantic's own ValidationError again, when its details survived the trip."""
    if not exc.errors:  # refused before validation (too deep, not JSON): no details
        return exc
    try:
        return pydantic_core.ValidationError.from_exception_data(
            exc.title or "input", [_line(error) for error in exc.errors or []]
        )
    except (TypeError, KeyError, ValueError):
        return exc


def _line(error: Mapping[str, Any]) -> Any:
    line: dict[str, Any] = {
        "type": error["type"],
        "loc": tuple(error.get("loc", ())),
        "input": error.get("input"),
    }
    if error.get("ctx"):
        line["ctx"] = error["ctx"]
    return line


def submit(
    celery_app: Any,
    store: Callable[[], EntityRegistry],
    info: CallableInfo,
    input_data: Mapping[str, Any],
    *,
    task: str,
    meta: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    settings: Settings,
) -> Job:
    """Resolve and validate now, then enqueue; on any error nothing is enqueued.

    The message carries the input with references (entity objects replaced by
    pinned references to their stored versions) and what each reference
    resolved to — never entity bodies.
    """
    prepared = prepare(store(), info, input_data)
    message_meta = {**(meta or {}), "resolved": prepared.pinned, "by_lineage": prepared.by_lineage}
    result = celery_app.send_task(
        task, args=[prepared.given], kwargs={META: message_meta}, **dict(options or {})
    )
    return Job(result, info, store, settings)
