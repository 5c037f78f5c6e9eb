"""`App`: the one object users create; it ties the store, callables and Celery together."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableRegistry
from graftq.tasks.runner import Call, local_worker, run_call


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
        self.callables = CallableRegistry()
        # `@app.register`, `@app.register("name")`, `@app.register(name=..., isolation=...,
        # time_limit=..., cache=...)`: every registered function is traced automatically.
        self.register = self.callables.register
        self._entities: EntityRegistry | None = None
        self._lock = threading.Lock()

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
        client = redis.Redis.from_url(
            self.settings.redis_url, decode_responses=True, health_check_interval=30
        )
        return EntityRegistry(
            client, prefix=self.settings.key_prefix, max_retries=self.settings.commit_retries
        )

    def reconnect(self) -> None:
        """Drop this process's Redis client; the next use makes a new one."""
        with self._lock:
            self._entities = None

    # -- callables -------------------------------------------------------------

    def execute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """Run now in this process (isolated), commit, and return the typed result."""
        info = self.callables[name]
        call = Call(
            execution_id=str(uuid.uuid4()),
            worker=local_worker(),
            max_reruns=self.settings.max_reruns,
        )
        return run_call(self.entities, info, input_data, call)

    async def aexecute(self, name: str, input_data: Mapping[str, Any]) -> Any:
        """`execute` without blocking the event loop."""
        return await asyncio.to_thread(self.execute, name, input_data)
