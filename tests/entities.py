"""Small builders and readers of stored entities, shared by the store, execute and job tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from graftq import Entity, EntityRegistry
from tests.apps.school import Counter, Student

# The identity fields of SPEC section 2, spelled out here rather than imported.
IDENTITY = frozenset({"ecs_id", "lineage_id", "parent_id", "created_at", "derived_from"})


def ids(entities: Iterable[Entity]) -> list[UUID]:
    return [entity.ecs_id for entity in entities]


def strip(value: Any, fields: frozenset[str] = IDENTITY) -> Any:
    """A model_dump() with the given identity fields removed at every depth."""
    if isinstance(value, dict):
        return {k: strip(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list | tuple):
        return [strip(v, fields) for v in value]
    return value


def put_student(store: EntityRegistry, **fields: Any) -> Student:
    """A stored student (Ada, 20, math unless `fields` say otherwise)."""
    stored = store.put(Student(**{"name": "Ada", "age": 20, "major": "math", **fields}))
    assert isinstance(stored, Student)
    return stored


def put_counter(store: EntityRegistry, value: int = 0) -> Counter:
    stored = store.put(Counter(value=value))
    assert isinstance(stored, Counter)
    return stored


def chain_from_head(versions: Sequence[Entity], head: Entity) -> list[Entity]:
    """The versions reachable from `head` by parent_id, root first."""
    by_id: dict[UUID, Entity] = {version.ecs_id: version for version in versions}
    chain = [head]
    while chain[-1].parent_id is not None:
        chain.append(by_id[chain[-1].parent_id])
    return chain[::-1]
