"""`App`: the one object users create; it ties the store, callables and Celery together."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery.signals import worker_process_init

from graftq.errors import UnknownCallable
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo, CallableRegistry
from graftq.tasks.runner import Call, local_worker, run_call
from graftq.worker.config import make_celery
from graftq.worker.connections import reachable, redis_client
from graftq.worker.job import Job, submit, submit_many
from graftq.worker.publish import Functions
from graftq.worker.task import PUBLISHED_TASK, bind, bind_published, run_job, task_name


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
        self.celery = make_celery(name, self.settings)
        self.callables = CallableRegistry(on_add=self._bind)
        # `@app.register`, `@app.register("name")`, `@app.register(name=..., isolation=...,
        # time_limit=..., cache=...)`: every registered function is traced automatically.
        self.register = self.callables.register
        self._entities: EntityRegistry | None = None
        self._functions: Functions | None = None
        self._lock = threading.Lock()
        bind_published(self.celery, self._run_published)
        # Each worker pool child makes its own Redis connections (never inherited).
        worker_process_init.connect(self._on_worker_process_init)  # weak: Apps can be freed

    def __repr__(self) -> str:
        return f"<graftq.App {self.name!r} redis={self.settings.redis_url}>"

    # -- the store -------------------------------------------------------------

    @property
    def entities(self) -> EntityRegistry:
        """The versioned entity store, connected on first use in this process."""
        with self._lock:
            if self._entities is None:
                self._entities = self._connect()
            return self._entities

    def _connect(self) -> EntityRegistry:
        client = redis_client(self.settings.redis_url, self.settings)
        return EntityRegistry(
            client, prefix=self.settings.key_prefix, max_retries=self.settings.commit_retries
        )

    @property
    def functions(self) -> Functions:
        """Functions published at run time, signed with the settings' signing key."""
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

    def _on_worker_process_init(self, **_: Any) -> None:
        self.reconnect()

    # -- callables -------------------------------------------------------------

    def execute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """Run now in this process (isolated), commit, and return the typed result."""
        call = Call(
            execution_id=str(uuid.uuid4()),
            worker=local_worker(),
            rerun_timeout=self.settings.rerun_timeout,
        )
        with reachable(self.settings):
            return run_call(self.entities, self.callable(name), input_data, call).value

    async def aexecute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """`execute` without blocking the event loop."""
        return await asyncio.to_thread(self.execute, name, input_data)

    def submit(self, name: str, input_data: Mapping[str, Any], **celery_options: Any) -> Job:
        """Resolve references, validate, then enqueue; on any error nothing is enqueued.

        `celery_options` go to `send_task` (countdown, queue, time_limit, task_id, ...).
        """
        with reachable(self.settings):
            info = self.callable(name)
            task, meta = self._task_of(info)
            return submit(
                self.celery, self._store, info, input_data, task=task, meta=meta,
                options=self._options_of(info, celery_options), settings=self.settings,
            )  # fmt: skip

    async def asubmit(self, name: str, input_data: Mapping[str, Any], **celery_options: Any) -> Job:
        """`submit` without blocking the event loop."""
        return await asyncio.to_thread(self.submit, name, input_data, **celery_options)

    def submit_many(
        self, name: str, inputs: Sequence[Mapping[str, Any]], **celery_options: Any
    ) -> list[Job]:
        """Submit a batch: every input is resolved and validated first (the references of
        the whole batch in one read), then all are enqueued in one go. A bad input raises
        an error naming its index, and nothing is enqueued."""
        with reachable(self.settings):
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
        return await asyncio.to_thread(self.submit_many, name, inputs, **celery_options)

    def job(self, job_id: str, name: str) -> Job:
        """A handle on an earlier job of callable `name`."""
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
        bind(self.celery, info, self._run_job)

    def _run_job(self, info: CallableInfo, request: Any, input_data: dict[str, Any]) -> Any:
        return run_job(self.entities, info, self.settings, request, input_data)

    def _run_published(self, request: Any, input_data: dict[str, Any], meta: dict[str, Any]) -> Any:
        info = self.functions.load(meta["name"], meta.get("version"))
        return self._run_job(info, request, input_data)
