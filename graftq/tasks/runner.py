"""Running a callable: prepare → isolated run → commit, with an Execution record.

This is all of `app.execute`; the Celery task calls the same `run_call`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import socket
import threading
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cloudpickle
import pydantic
import pydantic_core
import redis

from graftq.errors import ReturnTypeError, VersionConflict
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.store import EntityRegistry
from graftq.tasks import results
from graftq.tasks.callables import CallableInfo
from graftq.tasks.inputs import Prepared, prepare
from graftq.tasks.isolation import run_isolated

log = logging.getLogger(__name__)

_JSON, _PICKLE = b"J", b"P"
RERUN_BACKOFF_BASE = 0.005  # seconds; doubles per re-run
RERUN_BACKOFF_CAP = 0.5


@dataclass(frozen=True)
class Call:
    """One execution to run: its id, who runs it, and how often a head move may re-run it."""

    execution_id: str
    worker: str
    max_reruns: int = 10
    check_replay: bool = False


def local_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Ran:
    """The typed result and the execution that recorded it (an earlier one on replay)."""

    value: Any
    execution: Execution


def replayed(store: EntityRegistry, info: CallableInfo, execution: Execution) -> Ran:
    return Ran(results.replay(store, info, execution.result, execution.outputs), execution)


def run_call(
    store: EntityRegistry, info: CallableInfo, input_data: Mapping[str, Any], call: Call
) -> Ran:
    """Run once per execution id; the typed result with its Execution.

    Inputs given by lineage are re-resolved and the function re-run when a head
    moved before the commit (at most `max_reruns` times); with only pinned
    inputs the result is stored as a branch instead.
    """
    if call.check_replay and (done := store.execution(call.execution_id)) is not None:
        if done.status is ExecutionStatus.SUCCESS:
            return replayed(store, info, done)
    started = datetime.now(UTC)
    for attempt in range(1, call.max_reruns + 2):
        prepared = prepare(store, info, input_data)
        memo_key = _memo_key(store, prepared)
        if memo_key and (hit := store.memoized(memo_key)) is not None:
            return replayed(store, info, hit)
        try:
            value = execute_body(store, prepared)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            failed = _record(prepared, call, started, status=ExecutionStatus.FAILURE, error=error)
            try:
                store.commit([], execution=failed)
            except redis.RedisError:  # the run's own error matters more than its record
                log.warning("could not record failed execution %s", call.execution_id)
            raise
        execution = _record(
            prepared,
            call,
            started,
            status=ExecutionStatus.SUCCESS,
            result=results.recorded(value),
            attempts=attempt,
        )
        try:
            committed = store.commit(
                results.root_entities(value),
                branch=not prepared.by_lineage,
                execution=execution,
                memo_key=memo_key,
            )
        except VersionConflict:
            if attempt > call.max_reruns:
                raise
            time.sleep(_backoff(attempt))
            continue
        assert committed.execution is not None
        if committed.replayed:
            return replayed(store, info, committed.execution)
        return Ran(results.with_stored(value, committed.entities), committed.execution)
    raise AssertionError("unreachable")  # pragma: no cover


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff before a re-run, so contenders spread out."""
    return random.uniform(0, min(RERUN_BACKOFF_CAP, RERUN_BACKOFF_BASE * 2**attempt))


def execute_body(store: EntityRegistry, prepared: Prepared) -> Any:
    """Run the function body on the prepared arguments; the value its annotation admits."""
    info = prepared.info
    if info.isolation == "none":
        return _admitted(info, _call_inline(info, prepared.kwargs))

    def body() -> Any:
        return info.func(**prepared.kwargs)

    body.__qualname__ = f"callable {info.name!r}"
    return run_isolated(
        body,
        encode=lambda value: _encode(info, value),
        decode=lambda payload: _decode(info, payload),
        time_limit=info.time_limit,
        setup=store.isolate,
    )


def _call_inline(info: CallableInfo, kwargs: dict[str, Any]) -> Any:
    value = info.func(**kwargs)
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(value))
    box: list[Any] = []  # a loop runs in this thread: await on a fresh one next to it
    worker = threading.Thread(target=lambda: box.append(asyncio.run(_awaited(value))))
    worker.start()
    worker.join()
    if not box:
        raise RuntimeError(f"async callable {info.name} failed in its helper thread")
    return box[0]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _admitted(info: CallableInfo, value: Any) -> Any:
    """The value if the return annotation admits it (strictly), else ReturnTypeError."""
    try:
        return info.output_adapter.validate_python(value, strict=True)
    except pydantic.ValidationError as exc:
        raise ReturnTypeError(
            f"callable {info.name!r} returned {type(value).__name__} {value!r:.200}, which "
            f"its return annotation {_annotation(info)} does not admit: {exc}"
        ) from None


def _annotation(info: CallableInfo) -> str:
    shown = typing.get_type_hints(info.func).get("return")
    return getattr(shown, "__name__", None) or repr(shown)


def _encode(info: CallableInfo, value: Any) -> bytes:
    """In the child: check the value, then JSON (cloudpickle only if JSON cannot hold it)."""
    admitted = _admitted(info, value)
    try:
        return _JSON + info.output_adapter.dump_json(admitted)
    except pydantic_core.PydanticSerializationError:
        pickled: bytes = cloudpickle.dumps(admitted)
        return _PICKLE + pickled


def _decode(info: CallableInfo, payload: bytes) -> Any:
    if payload[:1] == _JSON:
        return info.output_adapter.validate_json(payload[1:])
    return cloudpickle.loads(payload[1:])


def _record(prepared: Prepared, call: Call, started: datetime, **outcome: Any) -> Execution:
    """The Execution record of this run; `outcome` gives status, result or error, attempts."""
    return Execution(
        id=call.execution_id,
        callable=prepared.info.name,
        callable_version=prepared.info.version,
        inputs=prepared.recorded_inputs(),
        started_at=started,
        finished_at=datetime.now(UTC),
        worker=call.worker,
        **outcome,
    )


def _memo_key(store: EntityRegistry, prepared: Prepared) -> str | None:
    if not prepared.info.cache or prepared.by_lineage:
        return None
    return store.keys.memo(prepared.info.version, prepared.memo_hash())
