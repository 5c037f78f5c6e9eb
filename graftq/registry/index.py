"""The type index: which lineages hold versions of which entity type, for `heads(Type)`.

The commit adds each new lineage to ``{p}:lineages:{type}`` (a sorted set
scored by when the lineage was first stored under that type) in its own
MULTI...EXEC, so the index is never behind the data. Readers page through
it with ZRANGE, a batch at a time: no KEYS, no SCAN of the keyspace. A lineage
whose versions changed type is listed under each; readers keep only the
lineages whose head is of the type asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from graftq.errors import GraftError
from graftq.registry.diff import Version
from graftq.registry.entity import Entity
from graftq.registry.keys import Keys


def add(keys: Keys, version: Version, parent: dict[str, Any] | None, *, pipeline: Any) -> None:
    """Index `version`'s lineage under its type (queued on the commit's pipeline).

    Only a new lineage, or a version whose type differs from its `parent` document's,
    adds anything: lineages are never removed (a prune keeps every head), so one
    entry per lineage and type is enough, and most commits write nothing here.
    """
    type_name = version.doc["type"]
    if parent is not None and parent["type"] == type_name:
        return
    first_stored = datetime.fromisoformat(version.doc["created_at"]).timestamp()
    pipeline.zadd(keys.lineages(type_name), {version.lineage_id: first_stored}, nx=True)
    pipeline.sadd(keys.types, type_name)


def type_names(entity_type: type[Entity]) -> list[str]:
    """The type names of `entity_type` and every subclass defined in this process."""
    names: dict[str, None] = {}
    todo = [entity_type]
    while todo:
        cls = todo.pop()
        names[cls.graftq_type] = None
        todo.extend(cls.__subclasses__())
    return list(names)


def stored_types(client: Any, keys: Keys) -> list[str]:
    """Every entity type name the store has versions of."""
    return sorted(cast(set[str], client.smembers(keys.types)))


def match_type(client: Any, keys: Keys, given: str) -> str:
    """The stored type name `given` means: itself, or the one whose last part it is."""
    known = stored_types(client, keys)
    if given in known:
        return given
    found = [name for name in known if name.rsplit(".", 1)[-1] == given]
    if len(found) == 1:
        return found[0]
    listed = ", ".join(known) or "(none yet)"
    if found:
        raise GraftError(f"entity type {given!r} is ambiguous: {', '.join(found)}")
    raise GraftError(f"no entity type {given!r} in the store; stored types: {listed}")


def lineage_batches(client: Any, keys: Keys, type_name: str, batch: int) -> Iterator[list[str]]:
    """The lineage ids indexed under `type_name`, oldest first, `batch` per ZRANGE."""
    start = 0
    while True:
        lineages = cast(
            list[str], client.zrange(keys.lineages(type_name), start, start + batch - 1)
        )
        if lineages:
            yield lineages
        if len(lineages) < batch:
            return
        start += batch


def head_batches(client: Any, keys: Keys, type_name: str, batch: int) -> Iterator[list[str]]:
    """Head version ids of the lineages indexed under `type_name`, oldest lineage first.

    Two round trips per batch (ZRANGE, then MGET of the heads).
    """
    for lineages in lineage_batches(client, keys, type_name, batch):
        heads = cast(list[str | None], client.mget([keys.head(i) for i in lineages]))
        yield [head for head in heads if head is not None]
