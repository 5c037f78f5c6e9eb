"""Submitting jobs and waiting for them: `submit` and `Job`.

Celery is imported where it is used (a Job exists only once Celery runs), so that
`import graftq` — and the zygote's import of the App's module — stays light.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any

from graftq.errors import GraftError, InvalidInput, JobTimeout, TimeLimitExceeded, Unreachable
from graftq.registry.execution import Execution
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks import results
from graftq.tasks.callables import CallableInfo
from graftq.tasks.exceptions import rebuilt
from graftq.tasks.inputs import input_digest, prepare, prepare_many, same_job, validation_error
from graftq.worker.connections import reachable, refused, wait
from graftq.worker.message import META, delivered


class JobStatus(StrEnum):
    """Celery's state names, as `Job.status` reports them."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED})
_SLICE = 1.0  # seconds: Celery's result consumers wait in slices this long (its Drainer)
_POLL = 0.02  # seconds between reads of a job's state in the last slice of a wait


class Job:
    """A submitted job. `id` is the Celery task id, which is also the execution id.

    `sent` is the input its message carried, when known: `get` answers only with the
    record of a job of this callable on that input. A task id reused by another job
    leaves the first one's SUCCESS in Celery's result backend (it never overwrites a
    success with the later refusal), so that check is what tells the two apart.
    """

    def __init__(
        self,
        result: Any,
        info: CallableInfo,
        store: Callable[[], EntityRegistry],
        settings: Settings,
        sent: dict[str, Any] | None = None,
    ) -> None:
        self._result = result
        self._info = info
        self._store = store
        self._settings = settings  # how long to wait on an unanswering server
        self._sent = sent

    def __repr__(self) -> str:
        return f"<graftq.Job {self.id} {self._info.name} {self.status}>"

    def __reduce__(self) -> Any:
        """Refused with what to keep instead: a Job holds its App, which no pickle carries
        (pickle would fail deep inside, on a lock or the registered function)."""
        raise TypeError(
            f"a graftq Job cannot be pickled: keep its id {self.id!r} and name "
            f"{self.name!r}, and get it back with app.job({self.id!r}, {self.name!r})"
        )

    def __copy__(self) -> Job:  # `copy.copy` would otherwise go through `__reduce__`
        return Job(self._result, self._info, self._store, self._settings, self._sent)

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

        Re-raises the function's exception (its own type when its module is loaded here);
        `GraftError` if the execution recorded under this id is another job's (a reused
        task id); `JobTimeout` after `timeout` seconds.
        """
        from celery import exceptions as celery_errors
        from celery.utils.serialization import UnpickleableExceptionWrapper

        try:
            with reachable(self._settings):
                payload = self._wait(timeout)
            # The job's own exception is raised out here, from the result in hand: one the
            # body raised (a TimeoutError, say) never reads as a server that did not answer.
            self._result.maybe_throw()
        except celery_errors.TimeoutError:
            # Celery keeps a waited-on result alive until it resolves; let go of it
            # (a later get() registers it again) so nothing lingers past shutdown.
            self._result.backend.remove_pending_result(self._result)
            raise JobTimeout(
                f"job {self.id} ({self._info.name}) did not finish within {timeout}s; "
                f"status {self.status}"
            ) from None
        except celery_errors.TimeLimitExceeded as exc:
            self._own(self.id)
            raise TimeLimitExceeded(
                f"job {self.id} ({self._info.name}) hit Celery's time limit: {exc}"
            ) from None
        except InvalidInput as exc:
            self._own(self.id)
            raise _validation_error(exc) from None
        except UnpickleableExceptionWrapper as exc:
            self._own(self.id)
            raise _unwrapped(exc) from None
        except Unreachable:
            raise
        except Exception:  # the function's own exception
            self._own(self.id)
            raise
        execution = self._own(payload["execution_id"])
        if execution is None:
            raise GraftError(
                f"job {self.id} ({self._info.name}) succeeded but its execution record "
                f"{payload['execution_id']} is missing from the store"
            )
        with reachable(self._settings):
            return results.replay(self._store(), execution.result, execution.outputs)

    def _own(self, execution_id: str) -> Execution | None:
        """The execution recorded under `execution_id`, if any; `GraftError` if it is
        another job's (a reused task id — Celery keeps the first job's state)."""
        with reachable(self._settings):
            execution = self._store().execution(execution_id)
        if execution is not None:
            same_job(execution, self._info, self._digest(execution.id))
        return execution

    def _digest(self, execution_id: str) -> str | None:
        """The `input_digest` the worker made of this job's input, if `execution_id` is this
        job's own record and its input is known. A memoized job answers with another
        execution's record, made from its own input: only its callable is compared."""
        if self._sent is None or execution_id != self.id:
            return None
        return input_digest(self._info, delivered(self._sent))

    def _wait(self, timeout: float | None) -> Any:
        """Celery's result, waited for in pieces of one connection wait each; a failed
        job's exception is returned, not raised (`get` raises it).

        Celery's Redis backend waits on its subscription's socket: a server that stops
        answering mid-wait (stopped, or a network that drops packets) is never noticed
        there. Each piece starts with a read of the stored state, which a silent server
        fails within one wait, so `reachable` raises `Unreachable` well within the
        connect timeout however long the job itself may take.

        A refused or dropped connection is what a restarting server looks like: the wait
        goes on as long as the server comes back within the connect timeout (as the
        worker's commit does), so a job waited on across a restart is answered.
        """
        from celery import exceptions as celery_errors

        deadline = None if timeout is None else time.monotonic() + timeout
        piece = wait(self._settings)
        restart = _Restart(self._settings)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if left is not None and left < _SLICE:
                    return self._polled(left)
                # whole seconds for Celery, the rest polled: a wait ends on its timeout
                whole = piece if left is None else min(piece, float(int(left)))
                return self._result.get(timeout=whole, propagate=False)
            except celery_errors.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                restart.answered()
            except Exception as exc:
                if not restart.outlasted_by(exc) or (deadline and time.monotonic() >= deadline):
                    raise
                time.sleep(_Restart.PAUSE)

    def _polled(self, left: float) -> Any:
        """The last fraction of a second of a wait, in short reads of the stored state:
        Celery waits on a result in slices of a whole second (`_SLICE`), so it would
        make a ``get(timeout=0.2)`` wait a second."""
        from celery import exceptions as celery_errors

        end = time.monotonic() + left
        while not self._result.ready():
            rest = end - time.monotonic()
            if rest <= 0:
                raise celery_errors.TimeoutError("The operation timed out.")
            time.sleep(min(_POLL, rest))
        return self._result.get(timeout=wait(self._settings), propagate=False)

    async def aget(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        """`get` without blocking the event loop (polls the result backend)."""
        import asyncio  # here, not at the top: `import graftq` stays light

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.005
        restart = _Restart(self._settings)
        while True:
            try:
                if await asyncio.to_thread(lambda: self.done):
                    break
                restart.answered()
            except Unreachable as exc:  # `_wait`'s patience with a restarting server
                if not restart.outlasted_by(exc.__cause__ or exc):
                    raise
            if deadline is not None and loop.time() >= deadline:
                raise JobTimeout(
                    f"job {self.id} ({self._info.name}) did not finish within {timeout}s; "
                    f"status {self.status}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll)
        return await asyncio.to_thread(self.get, 5.0)


class _Restart:
    """A wait's patience with a server that refuses or drops connections, as a restarting
    one does for a moment: it goes on while another try (which may time out, at worst)
    ends within the connect timeout of the first refusal. A server that stays away, or
    does not answer at all, still fails the wait with `Unreachable` in that time."""

    PAUSE = 0.2  # seconds between tries

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._since: float | None = None

    def answered(self) -> None:
        """The server answered: a later refusal is another restart."""
        self._since = None

    def outlasted_by(self, exc: BaseException) -> bool:
        """Whether to try again after `exc`."""
        now = time.monotonic()
        self._since = self._since or now
        gives_up = self._since + self._settings.connect_timeout - wait(self._settings)
        return refused(exc) and now < gives_up


def _unwrapped(wrapper: Any) -> Exception:
    """The function's exception as its own type again, when this process has it loaded.

    A worker sends an exception pickle cannot carry (its ``__init__`` wants more than
    its args, say) as Celery's ``UnpickleableExceptionWrapper`` of its type's name and
    args; Celery's own ``restore`` would make a look-alike class of that name.
    """
    exc = rebuilt(wrapper.exc_module, wrapper.exc_cls_name, wrapper.exc_args or ())
    return exc if isinstance(exc, Exception) else wrapper


def _validation_error(exc: InvalidInput) -> Exception:
    """Pydantic's own ValidationError again, when its details survived the trip."""
    if not exc.errors:  # refused before validation (too deep, not JSON): no details
        return exc
    try:
        return validation_error(exc.title or "input", exc.errors or [])
    except (TypeError, KeyError, ValueError):
        return exc


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
    pinned references to their stored versions), never entity bodies; the worker
    resolves them again when the job runs (a lineage reference means the head then).
    """
    prepared = prepare(store(), info, input_data)
    kwargs = {META: dict(meta)} if meta else {}
    args = [prepared.given]
    shown = {"argsrepr": _shown(args), "kwargsrepr": _shown(kwargs)}
    with reachable(settings):  # the broker's; the store's client says so itself, and what
        # the input's own validators raise (a TimeoutError, say) stays what it is
        result = celery_app.send_task(
            task, args=args, kwargs=kwargs, **shown, **dict(options or {})
        )
    return Job(result, info, store, settings, sent=prepared.given)


def submit_many(
    celery_app: Any,
    store: Callable[[], EntityRegistry],
    info: CallableInfo,
    inputs: Sequence[Mapping[str, Any]],
    *,
    task: str,
    meta: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    settings: Settings,
) -> list[Job]:
    """`submit` for a batch: every input resolved and validated first (one read for all
    references), then all messages published in one go (kombu's batched publish), the
    jobs' task-sent events with them (`_SentEvents`)."""
    options = dict(options or {})
    if "task_id" in options:
        raise TypeError("submit_many gives each job its own id; task_id cannot be set")
    prepared = prepare_many(store(), info, inputs)
    kwargs = {META: dict(meta)} if meta else {}
    events = _SentEvents(celery_app)
    with (
        reachable(settings),  # the broker's, as in `submit`
        _waits_subscribe(celery_app.backend),
        celery_app.producer_or_acquire() as producer,
        _declares_once(producer),
        producer.batch(max_size=len(prepared) or 1),
    ):
        results = [
            celery_app.send_task(
                task,
                args=[one.given],
                kwargs=kwargs,
                producer=producer,
                argsrepr=_shown([one.given]),
                kwargsrepr=_shown(kwargs),
                event_dispatcher=events,
                **options,
            )
            for one in prepared
        ]
        events.publish_all(producer)
    return [
        Job(result, info, store, settings, sent=one.given)
        for result, one in zip(results, prepared, strict=True)
    ]


class _SentEvents:
    """A batch's task-sent events (for Flower), published a hundred to a message.

    Celery sends each job's event as a message of its own, a fifth of a batch's time.
    Given as a job's ``event_dispatcher``, this keeps the event Celery makes for it
    instead; `publish_all` then sends them as lists the way Celery's own event buffer
    does (`EventDispatcher.flush`: ``_prepare_event``, then ``_publish`` of a list under
    ``task.multi``), so the events are Celery's to the byte; Celery's event receivers,
    Flower's among them, take a list of events as well as one.
    """

    PER_MESSAGE = 100  # events of ≈ 0.5 kB each: no message a pub/sub client chokes on

    def __init__(self, celery_app: Any) -> None:
        self._dispatcher = celery_app.events.Dispatcher(enabled=False)  # as Celery's default
        self._events: list[Any] = []
        self._retry: dict[str, Any] = {}

    def publish(self, kind: str, fields: dict[str, Any], producer: Any, **retry: Any) -> None:
        """What Celery calls to send one job's event: it is kept for `publish_all`."""
        self._events.append(self._dispatcher._prepare_event(kind, fields))
        self._retry = retry

    def publish_all(self, producer: Any) -> None:
        events, size = self._events, self.PER_MESSAGE
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            self._dispatcher._publish(batch, producer, "task.multi", **self._retry)
        events.clear()


def _shown(value: Any, limit: int = 1024) -> str:
    """What Flower shows of a job's arguments: the input as submitted, references visible.

    Celery's own `saferepr` of each message's arguments is pure Python and would be a
    fifth of a batch's time; the input is plain JSON data, so `repr` is exact and fast.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _declares_once(producer: Any) -> Iterator[None]:
    """Let `producer` see at once that a queue or exchange is declared already, for a batch.

    Every message and every task-sent event asks kombu to declare its queue or exchange;
    with publish retries on, kombu wraps even a declaration it has cached (no command is
    sent) in a retrying call — a sixth of a batch's time. Here a cached declaration is
    answered first, as kombu itself would answer it; any other goes to kombu as before.
    """
    declare = producer.maybe_declare

    def cached_first(entity: Any, *args: Any, **kwargs: Any) -> Any:
        client = getattr(producer.channel.connection, "client", None)
        declared = getattr(client, "declared_entities", ())
        if entity and entity.can_cache_declaration and hash(entity) in declared:
            return False  # kombu's own answer for a declaration it has made
        return declare(entity, *args, **kwargs)

    producer.maybe_declare = cached_first
    try:
        yield
    finally:
        del producer.maybe_declare  # the pooled producer is left as it was


@contextlib.contextmanager
def _waits_subscribe(backend: Any) -> Iterator[None]:
    """Skip the result backend's subscription at send time, for a batch.

    Celery's Redis backend subscribes to each job's result channel as it is sent,
    one command per job; a batch would spend a third of its time there. Waiting on
    a job subscribes anyway and then reads the stored state (the backend's
    `on_wait_for_pending`), so no result is missed, and jobs nobody waits on cost
    nothing. Other backends are left alone.
    """
    from celery.backends.redis import RedisBackend

    if not isinstance(backend, RedisBackend):
        yield
        return
    backend.on_task_call = lambda producer, task_id: None
    try:
        yield
    finally:
        del backend.on_task_call
