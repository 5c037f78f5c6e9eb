"""Running a callable: prepare → isolated run → commit, with an Execution record.

This is all of `app.execute`; the Celery task calls the same `run_call`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import socket
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic

from graftq.errors import ReturnTypeError, Unreachable, VersionConflict
from graftq.registry import commit, containers
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.overlay import isolate_stores
from graftq.registry.store import Announcement, EntityRegistry
from graftq.tasks import encoding, results
from graftq.tasks.callables import CallableInfo
from graftq.tasks.inputs import Done, Prepared, input_digest, prepare, same_job
from graftq.tasks.isolation import Zygote, run_isolated

log = logging.getLogger(__name__)
T = TypeVar("T")

RERUN_BACKOFF_BASE = 0.002  # seconds; doubles per re-run after the first, which is at once
RERUN_BACKOFF_CAP = 0.05
RECONNECT_PAUSE = 0.5  # seconds between commits tried on an unreachable store
_DOUBLINGS = 16  # BASE * 2**16 is past the cap: later re-runs wait up to the cap as well
# Why a re-run that read the very versions the last conflicting attempt read cannot commit.
_FUTILE = (
    "the re-run read the same input versions, so the head it must move was moved by a write "
    "outside its inputs' trees (a sub-entity stored on its own, say)"
)


@dataclass(frozen=True)
class Call:
    """One execution to run: its id, who runs it, and how long head moves may re-run it."""

    execution_id: str
    worker: str
    rerun_timeout: float = 60.0
    check_replay: bool = False
    zygote: Zygote | None = None  # the worker's fork server, for isolated bodies
    also: commit.Also | None = None  # more writes for the transaction that records success
    announce: Announcement | None = None  # told with the first read (the job has started)
    # Seconds a commit refused by an unreachable store is tried again: a worker's job
    # outlives a Redis restart (the commit is idempotent per execution id); 0 for execute.
    reconnect_timeout: float = 0.0


def local_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Ran:
    """The typed result and the execution that recorded it (an earlier one on replay);
    `committed` when this call's own transaction recorded it (with `Call.also`)."""

    value: Any
    execution: Execution
    committed: bool = False


def replayed(store: EntityRegistry, execution: Execution) -> Ran:
    return Ran(results.replay(store, execution.result, execution.outputs), execution)


def run_call(
    store: EntityRegistry, info: CallableInfo, input_data: Mapping[str, Any], call: Call
) -> Ran:
    """Run once per execution id; the typed result with its Execution.

    When a head moved before the commit, inputs read by lineage are re-resolved and
    the function re-run (for up to `rerun_timeout` seconds); lineages read only
    pinned get their new versions stored as branches instead.
    """
    digest = input_digest(info, input_data)
    started = datetime.now(UTC)
    deadline = time.monotonic() + call.rerun_timeout
    conflicted_on: Any = None  # the pinned inputs of the last attempt that conflicted
    for attempt in itertools.count(1):
        replay_of = call.execution_id if call.check_replay and attempt == 1 else None
        announce = call.announce if attempt == 1 else None
        prepared = prepare(store, info, input_data, replay_of=replay_of, announce=announce)
        if isinstance(prepared, Done):  # a redelivery of a job that already committed
            return replayed(store, same_job(prepared.execution, info, digest))
        if prepared.failed is not None:  # a retry may replace its own failure, no other's
            same_job(prepared.failed, info, digest)
        memo_key = _memo_key(store, prepared)
        if memo_key and (hit := store.memoized(memo_key)) is not None:
            return replayed(store, hit)
        run = _Run(store, prepared, call, started, digest)
        try:
            recorded = _recorded(info, execute_body(store, prepared, call.zygote))
            write = functools.partial(
                store.commit,
                recorded.entities,
                branch=True,
                strict=prepared.read_by_head,
                execution=run.record(
                    ExecutionStatus.SUCCESS, result=recorded.data, attempts=attempt
                ),
                memo_key=memo_key,
                also=call.also,
            )
            try:
                committed = _until_reachable(call, write)
            except pydantic.ValidationError as exc:  # the store refused a returned entity
                raise results.invalid(info.name, exc) from None
        except VersionConflict as exc:
            if prepared.pinned == conflicted_on:  # nothing else to read: a re-run is the same
                exc = VersionConflict(f"{exc}; re-running cannot help: {_FUTILE}")
            elif time.monotonic() < deadline:
                conflicted_on = prepared.pinned
                time.sleep(_backoff(attempt))
                continue
            run.failed(exc, attempt)
            raise exc from None
        except Exception as exc:  # not SystemExit & co: an ending process has not failed a run
            run.failed(exc, attempt)
            raise
        assert committed.execution is not None
        if committed.replayed:
            return replayed(store, same_job(committed.execution, info, digest))
        value = results.rebuild(recorded.data, committed.entities)
        return Ran(value, committed.execution, committed=True)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class _Run:
    """One attempt's Execution record, for success or (recorded best effort) failure."""

    store: EntityRegistry
    prepared: Prepared
    call: Call
    started: datetime
    digest: str

    def record(self, status: ExecutionStatus, **outcome: Any) -> Execution:
        return Execution(
            id=self.call.execution_id,
            callable=self.prepared.info.name,
            callable_version=self.prepared.info.version,
            inputs=self.prepared.recorded_inputs(),
            input_digest=self.digest,
            started_at=self.started,
            finished_at=datetime.now(UTC),
            worker=self.call.worker,
            status=status,
            **outcome,
        )

    def failed(self, exc: BaseException, attempts: int) -> None:
        """Record the failure; a successful record of this id is never replaced."""
        failed = self.record(
            ExecutionStatus.FAILURE, error=f"{type(exc).__name__}: {exc}", attempts=attempts
        )
        try:
            _until_reachable(self.call, functools.partial(self.store.commit, [], execution=failed))
        except Exception:  # the run's own error matters more than its record (Redis down?)
            log.warning("no record of failed execution %s", self.call.execution_id, exc_info=True)


def _until_reachable(call: Call, write: Callable[[], T]) -> T:
    """`write`, tried again while the store is unreachable, for `call.reconnect_timeout` s.

    A refused connection fails at once, so a Redis restart under a commit would fail the
    job (and leave no record of it); trying again is safe, since a commit that happened
    after all is found by its execution id and answered, never written twice.
    """
    deadline = time.monotonic() + call.reconnect_timeout
    while True:
        try:
            return write()
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            log.warning(
                "store unreachable for execution %s; trying the commit again", call.execution_id
            )
            time.sleep(RECONNECT_PAUSE)


def _backoff(attempt: int) -> float:
    """How long to wait before re-run `attempt`: the first at once, then full jitter.

    A job that lost a race re-runs before the winner's process has fetched its next
    message, so on a worker's own pool the loser goes next instead of starving;
    among many contenders the growing jitter spreads them out.
    """
    if attempt <= 1:
        return 0.0
    import random  # here: an imported `random` reseeds in every fork (see `zygote`)

    longest = RERUN_BACKOFF_BASE * 2 ** min(attempt, _DOUBLINGS)
    return random.uniform(0, min(RERUN_BACKOFF_CAP, longest))


def execute_body(store: EntityRegistry, prepared: Prepared, zygote: Zygote | None = None) -> Any:
    """Run the function body on the prepared arguments; the value its annotation admits.

    An isolated body runs in a child of the `zygote` when there is one (code-registered
    callables; a published one is not in the zygote's code), else in a fork of this
    process. Either way the value crosses as typed JSON.
    """
    info = prepared.info
    if info.isolation == "none":
        return _admitted(info, _call_inline(info, prepared.kwargs))
    if zygote is not None and not info.published:
        value = zygote.run(info.name, info.version, prepared.kwargs, time_limit=info.time_limit)
        return _admitted(info, value)

    def body() -> Any:
        return info.func(**prepared.kwargs)

    body.__qualname__ = f"callable {info.name!r}"
    value = run_isolated(
        body,
        encode=lambda value: results.carried(info.name, value),
        decode=lambda payload: encoding.loads(payload, pickles=True),  # our own child
        time_limit=info.time_limit,
        setup=isolate_stores,
    )
    return _admitted(info, value)


def _call_inline(info: CallableInfo, kwargs: dict[str, Any]) -> Any:
    value = info.func(**kwargs)
    if not inspect.isawaitable(value):
        return value
    import asyncio

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
    """The value itself, if the return annotation admits it (strictly), else ReturnTypeError.

    The annotation is a check, not a conversion: what comes back is what the function
    returned, so an isolated call returns the same objects as an inline one.
    """
    try:
        validated = info.output_adapter.validate_python(value, strict=True)
    except pydantic.ValidationError as exc:
        raise ReturnTypeError(
            f"callable {info.name!r} returned {type(value).__name__} {value!r:.200}, which "
            f"its return annotation {_annotation(info)} does not admit: {exc}"
        ) from None
    made = None if validated is value else _made_of_a_dict(value, validated)
    if made is not None:
        path, kind = made
        raise ReturnTypeError(
            f"callable {info.name!r} returned a dict at {containers.dotted(path)} where its "
            f"return annotation {_annotation(info)} wants a {kind.__name__}: the annotation "
            f"checks the value, it does not convert it; return a {kind.__name__}"
        )
    return value


def _made_of_a_dict(value: Any, validated: Any) -> tuple[containers.Path, type] | None:
    """Where validating `value` made a model (a dataclass, ...) of a dict, and of what class.

    Pydantic admits a dict for a model even when strict; the caller would get the dict
    back, and no entity it describes would be committed.
    """
    for path, leaf in containers.leaves(validated):
        if type(leaf) is dict:
            continue
        here = value
        try:
            for step in path:
                here = here[step]
        except (KeyError, IndexError, TypeError):  # a shape validation changed otherwise
            continue
        if type(here) is dict:
            return path, type(leaf)
    return None


def _recorded(info: CallableInfo, value: Any) -> results.Recorded:
    """The value as its execution records it; one with no typed form is a ReturnTypeError
    (never recorded as something else, which the caller would get back instead)."""
    try:
        return results.record(value)
    except encoding.EncodingError as exc:
        raise results.unrecordable(info.name, exc) from None


def _annotation(info: CallableInfo) -> str:
    shown = typing.get_type_hints(info.func).get("return")
    return getattr(shown, "__name__", None) or repr(shown)


def _memo_key(store: EntityRegistry, prepared: Prepared) -> str | None:
    if not prepared.info.cache or prepared.by_lineage:
        return None
    info = prepared.info
    return store.keys.memo(info.name, info.version, prepared.memo_hash())
