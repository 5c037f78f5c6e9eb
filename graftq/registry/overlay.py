"""A private overlay over Redis: the store as an isolated child sees it.

Once `isolate_stores()` ran in a process (the forked child of an isolated call),
every `EntityRegistry` in it — of any App, made before or after — reads Redis but
keeps its writes in this process's memory, where they vanish with it. The overlay
offers the few redis-py methods the store uses, so the commit code is the same for
both, and holds its Redis client privately: no store handle a body can reach writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from graftq.errors import InvalidEntity
from graftq.registry import tree
from graftq.registry.entity import Entity

if TYPE_CHECKING:  # redis-py is imported where used: `import graftq` stays light
    import redis

_isolated = False
# Versions the overlay stored in this process: version id → the version it was made from.
_made: dict[str, str | None] = {}


def isolate_stores() -> None:
    """From now on, in this process and those it forks, every store's writes stay private."""
    global _isolated
    _isolated = True


def isolated() -> bool:
    """True in an isolated call's process."""
    return _isolated


def made(versions: Iterable[tuple[str, str | None]]) -> None:
    """Note versions (id, parent id) a commit just stored in the overlay."""
    _made.update(versions)


def restamped(value: Any) -> Any:
    """`value` with each entity that is a version the overlay made (the body stored it)
    given the id of the version it was made from, the last one Redis holds.

    What a body stores is discarded; what it returns is committed. An entity it stored
    and returned carries an id Redis never saw, in a lineage Redis has: as the stored
    version it was made from, changed, it becomes that version's successor, as it would
    had the body not stored it. An entity stored first in the body keeps its own ids.
    """
    if not _made:  # the body stored nothing (most do): nothing to walk
        return value
    with contextlib.suppress(InvalidEntity):  # the commit refuses it, saying why
        for root in tree.roots(value):
            for node in tree.nodes(tree.walk(root)):
                _restamp(node.entity)
    return value


def _restamp(entity: Entity) -> None:
    ecs_id = str(entity.ecs_id)
    origin: str | None = ecs_id
    while origin in _made:
        origin = _made[origin]
    if origin is not None and origin != ecs_id:
        entity.__dict__["ecs_id"] = UUID(origin)  # frozen models too: it is our copy


# What a redis-py pool adds to its connections' settings itself: objects of that pool,
# which a new pool makes anew.
_MADE_BY_THE_POOL = frozenset({"maint_notifications_pool_handler", "himport_registry"})


def _own_client(client: redis.Redis) -> redis.Redis:
    """`client` again, on a connection pool of this process's own.

    An isolated call's process was forked, maybe from one thread of many (`aexecute`,
    a web server's thread pool): the pool it inherited may be locked by a thread that
    does not exist here, and redis-py's reset of a pool after a fork takes that lock,
    so the first read would wait forever. A new pool with the same settings has no
    such past.
    """
    import copy

    pool = client.connection_pool
    settings = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name not in _MADE_BY_THE_POOL
    }
    own = copy.copy(client)  # the same client class and attributes, another pool
    own.connection_pool = type(pool)(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **settings
    )
    return own


class OverlayClient:
    """Reads from Redis through `base`, keeps every write to itself."""

    def __init__(self, base: redis.Redis) -> None:
        self._base = _own_client(base)
        self.strings: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def close(self) -> None:
        """Close the connections of the overlay's own pool."""
        self._base.connection_pool.disconnect()

    def mget(self, keys: list[str]) -> list[str | None]:
        missing = [key for key in keys if key not in self.strings]
        below = cast(list[str | None], self._base.mget(missing)) if missing else []
        found = dict(zip(missing, below, strict=True))
        return [self.strings[key] if key in self.strings else found[key] for key in keys]

    def get(self, key: str) -> str | None:
        return self.mget([key])[0]

    def lrange(self, key: str, start: int, end: int) -> list[str]:
        items = cast(list[str], self._base.lrange(key, 0, -1)) + self.lists.get(key, [])
        return items[start : (None if end == -1 else end + 1)]

    def hget(self, key: str, field: str) -> str | None:
        return cast(str | None, self._base.hget(key, field))

    def smembers(self, key: str) -> set[str]:
        return cast(set[str], self._base.smembers(key)) | self.sets.get(key, set())

    def zrange(self, key: str, start: int, end: int) -> list[str]:
        """Base and overlay members by score; reads the whole set (only ever in a child)."""
        stored = self._base.zrange(key, 0, -1, withscores=True)
        scores = dict(cast(list[tuple[str, float]], stored))
        for member, score in self.zsets.get(key, {}).items():
            scores.setdefault(member, score)
        ordered = sorted(scores, key=lambda member: (scores[member], member))
        return ordered[start : (None if end == -1 else end + 1)]

    def set(self, key: str, value: str) -> None:
        self.strings[key] = value

    def rpush(self, key: str, *values: str) -> None:
        self.lists.setdefault(key, []).extend(values)

    def sadd(self, key: str, *values: str) -> None:
        self.sets.setdefault(key, set()).update(values)

    def zadd(self, key: str, mapping: dict[str, float], nx: bool = False) -> None:
        scores = self.zsets.setdefault(key, {})
        for member, score in mapping.items():
            scores[member] = scores.get(member, score) if nx else score

    def expire(self, key: str, seconds: int) -> None:
        """Nothing expires here: the overlay ends with its process."""

    def pipeline(self, transaction: bool = True) -> OverlayPipeline:
        return OverlayPipeline(self)


class OverlayPipeline:
    """Queues writes after multi() and applies them on execute(); nobody else writes here."""

    def __init__(self, client: OverlayClient) -> None:
        self._client = client
        self._queued: list[tuple[str, tuple[Any, ...]]] = []

    def watch(self, *keys: str) -> None:
        """Nothing to watch: this process is the overlay's only writer."""

    def mget(self, keys: list[str]) -> list[str | None]:
        return self._client.mget(keys)

    def multi(self) -> None:
        self._queued.clear()

    def set(self, key: str, value: str) -> None:
        self._queued.append(("set", (key, value)))

    def rpush(self, key: str, *values: str) -> None:
        self._queued.append(("rpush", (key, *values)))

    def sadd(self, key: str, *values: str) -> None:
        self._queued.append(("sadd", (key, *values)))

    def zadd(self, key: str, mapping: dict[str, float], nx: bool = False) -> None:
        self._queued.append(("zadd", (key, mapping, nx)))

    def expire(self, key: str, seconds: int) -> None:
        self._queued.append(("expire", (key, seconds)))

    def execute(self) -> None:
        for method, args in self._queued:
            getattr(self._client, method)(*args)
        self._queued.clear()

    def __enter__(self) -> OverlayPipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._queued.clear()
