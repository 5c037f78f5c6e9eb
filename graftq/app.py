"""`App`: the one object users create; it ties the store, callables and Celery together.

Celery, kombu and redis-py are imported when first used, not by `import graftq`:
the module that defines an App and its entities must import light, because each
worker pool process imports it again in its fork server (`graftq.tasks.isolation.zygote`),
whose forks are cheaper the less it holds.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from graftq.errors import RegistrationError, UnknownCallable
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo, CallableRegistry
from graftq.tasks.runner import Call, local_worker, run_call
from graftq.worker.message import PUBLISHED_TASK, RESERVED, task_name

if TYPE_CHECKING:
    from graftq.worker.job import Job
    from graftq.worker.pool import ForkServer
    from graftq.worker.publish import Functions


class App:
    """A graftq application: `app.entities`, `app.callables`, `app.execute`, `app.submit`.

    Settings come from keyword arguments, else `GRAFTQ_*` variables (see
    `graftq.settings.Settings`). No connection is made until first use, and
    each process (each forked worker child) makes its own.
    """

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        self.name = name
        self.settings = settings or Settings.from_env(redis_url=redis_url, **options)
        self.callables = CallableRegistry(on_add=self._bind, reserved=RESERVED)
        # `@app.register`, `@app.register("name")`, `@app.register(name=..., isolation=...,
        # time_limit=..., cache=...)`: every registered function is traced automatically.
        self.register = self.callables.register
        self._entities: EntityRegistry | None = None
        self._functions: Functions | None = None
        self._celery: Any = None
        self._fork_server: ForkServer | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<graftq.App {self.name!r} redis={self.settings.redis_url}>"

    @property
    def celery(self) -> Any:
        """The `celery.Celery` behind this App (made on first use, with every callable a task)."""
        with self._lock:
            if self._celery is None:
                self._celery = self._make_celery()
            return self._celery

    def _make_celery(self) -> Any:
        from celery.signals import worker_init, worker_process_init, worker_process_shutdown

        from graftq.worker.config import make_celery
        from graftq.worker.pool import ForkServer
        from graftq.worker.task import bind_published

        celery = make_celery(self.name, self.settings)
        bind_published(
            celery, self._run_published, self._job_failed, track_started=self._track_started()
        )
        for info in self.callables.values():
            if not info.published:
                self._bind_to(celery, info)
        # Each worker pool process makes its own Redis connections (never inherited)
        # and its own fork server.
        self._fork_server = ForkServer(self)
        worker_init.connect(self._on_worker_init)  # weak, all three: Apps can be freed
        worker_process_init.connect(self._on_worker_process_init)
        worker_process_shutdown.connect(self._on_worker_process_shutdown)
        return celery

    # -- the store -------------------------------------------------------------

    @property
    def entities(self) -> EntityRegistry:
        """The versioned entity store, connected on first use in this process."""
        with self._lock:
            if self._entities is None:
                self._entities = self._connect()
            return self._entities

    def _connect(self) -> EntityRegistry:
        from graftq.worker.connections import redis_client

        client = redis_client(self.settings.redis_url, self.settings)
        return EntityRegistry(
            client, prefix=self.settings.key_prefix, max_retries=self.settings.commit_retries
        )

    @property
    def functions(self) -> Functions:
        """Functions published at run time, signed with the settings' signing key."""
        from graftq.worker.publish import Functions

        store = self.entities
        with self._lock:
            if self._functions is None:
                self._functions = Functions(store.client, store.keys, self.settings.signing_key)
            return self._functions

    def reconnect(self) -> None:
        """Drop this process's Redis clients; the next use makes new ones."""
        with self._lock:
            self._entities = None
            self._functions = None

    def _on_worker_init(self, **_: Any) -> None:
        if self._fork_server is not None:
            self._fork_server.remember_code()

    def _on_worker_process_init(self, **_: Any) -> None:
        self.reconnect()
        if self._fork_server is not None:
            self._fork_server.start(pool_process=True)

    def _on_worker_process_shutdown(self, **_: Any) -> None:
        if self._fork_server is not None:
            self._fork_server.stop()

    # -- callables -------------------------------------------------------------

    def execute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """Run now in this process (isolated), commit, and return the typed result.

        The store's client raises `Unreachable` itself; nothing here wraps the call, so
        that what the body raises (a TimeoutError, say) comes back as it is.
        """
        call = Call(
            execution_id=str(uuid.uuid4()),
            worker=local_worker(),
            rerun_timeout=self.settings.rerun_timeout,
        )
        return run_call(self.entities, self.callable(name), input_data, call).value

    async def aexecute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """`execute` without blocking the event loop."""
        return await _in_thread(self.execute, name, input_data)

    def submit(self, name: str, input_data: Mapping[str, Any], **celery_options: Any) -> Job:
        """Resolve references, validate, then enqueue; on any error nothing is enqueued.

        `celery_options` go to `send_task` (countdown, queue, time_limit, task_id, ...).
        """
        from graftq.worker.job import submit

        info = self.callable(name)
        task, meta = self._task_of(info)
        return submit(
            self.celery, self._store, info, input_data, task=task, meta=meta,
            options=self._options_of(info, celery_options), settings=self.settings,
        )  # fmt: skip

    async def asubmit(self, name: str, input_data: Mapping[str, Any], **celery_options: Any) -> Job:
        """`submit` without blocking the event loop."""
        return await _in_thread(self.submit, name, input_data, **celery_options)

    def submit_many(
        self, name: str, inputs: Sequence[Mapping[str, Any]], **celery_options: Any
    ) -> list[Job]:
        """Submit a batch: every input is resolved and validated first (the references of
        the whole batch in one read), then all are enqueued in one go. A bad input raises
        an error naming its index, and nothing is enqueued."""
        from graftq.worker.job import submit_many

        info = self.callable(name)
        task, meta = self._task_of(info)
        return submit_many(
            self.celery, self._store, info, inputs, task=task, meta=meta,
            options=self._options_of(info, celery_options), settings=self.settings,
        )  # fmt: skip

    async def asubmit_many(
        self, name: str, inputs: Sequence[Mapping[str, Any]], **celery_options: Any
    ) -> list[Job]:
        """`submit_many` without blocking the event loop."""
        return await _in_thread(self.submit_many, name, inputs, **celery_options)

    def job(self, job_id: str, name: str) -> Job:
        """A handle on an earlier job of callable `name`."""
        from graftq.worker.job import Job

        info = self.callable(name)
        return Job(self.celery.AsyncResult(job_id), info, self._store, self.settings)

    def publish(self, func: Callable[..., Any], name: str | None = None) -> str:
        """Ship `func` to workers that do not have it in code; returns its content version."""
        info = self.functions.publish(func, name)
        self.callables.publish(info)
        return info.version

    def callable(self, name: str) -> CallableInfo:
        """The callable registered in code under `name`, else the newest published one."""
        if name in self.callables:
            return self.callables[name]
        try:
            info = self.functions.load(name)
        except UnknownCallable:
            raise UnknownCallable(
                f"no callable named {name!r}; registered: "
                f"{', '.join(sorted(self.callables)) or '(none)'}"
            ) from None
        self.callables.publish(info)
        return info

    # -- the worker side ---------------------------------------------------------

    @staticmethod
    def _task_of(info: CallableInfo) -> tuple[str, dict[str, str] | None]:
        """The Celery task that runs `info`, and the `_graftq` meta its messages carry."""
        if info.published:
            return PUBLISHED_TASK, {"name": info.name, "version": info.version}
        return task_name(info.name), None

    @staticmethod
    def _options_of(info: CallableInfo, celery_options: dict[str, Any]) -> dict[str, Any]:
        """`celery_options`, and for a published function its name for Flower and logs
        (Celery's shadow name), which would otherwise say "graftq.published"."""
        if info.published:
            return {"shadow": task_name(info.name), **celery_options}
        return celery_options

    def _store(self) -> EntityRegistry:
        return self.entities

    def _bind(self, info: CallableInfo) -> None:
        """Make a newly registered callable a task, once there is a Celery app to hold it."""
        if self._celery is not None:
            self._bind_to(self._celery, info)

    def _bind_to(self, celery: Any, info: CallableInfo) -> None:
        from graftq.worker.task import bind

        bind(celery, info, self._run_job, self._job_failed, track_started=self._track_started())

    def _track_started(self) -> bool:
        """Whether Celery stores a job's STARTED (else the job does: `graftq.worker.backend`)."""
        from graftq.worker import backend

        return not backend.in_store(self.settings)

    def _run_job(self, info: CallableInfo, request: Any, input_data: dict[str, Any]) -> Any:
        from graftq.worker.task import run_job

        zygote = None if self._fork_server is None else self._fork_server.get()
        return run_job(
            self.entities,
            info,
            self.settings,
            request,
            input_data,
            zygote=zygote,
            result_backend=self.celery.backend,
        )

    def _job_failed(self, task: Any, exc: BaseException, job: Any, replace: bool) -> None:
        from graftq.worker.task import record_failed_job

        record_failed_job(self.entities, task, exc, job, replace=replace)

    def _run_published(self, request: Any, input_data: dict[str, Any], meta: dict[str, Any]) -> Any:
        name = meta["name"]
        own = self.callables.get(name)
        if own is not None and not own.published:  # checked before anything is loaded
            raise RegistrationError(
                f"refusing published function {name!r}: {name!r} is registered in code "
                "on this worker, and one name means one function; publish it under another name"
            )
        info = self.functions.load(name, meta.get("version"))
        return self._run_job(info, request, input_data)


P = ParamSpec("P")
R = TypeVar("R")


async def _in_thread(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`asyncio.to_thread`; asyncio is imported here, by an async caller, not by `graftq`."""
    import asyncio

    return await asyncio.to_thread(func, *args, **kwargs)
