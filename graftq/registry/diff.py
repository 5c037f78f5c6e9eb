"""Change detection: which nodes of a tree need new versions, and what to write.

Works bottom-up like a Merkle tree: a node's document names its sub-entities
by their resulting `ecs_id`, so a changed sub-entity changes every ancestor's
document while untouched siblings keep their ids and are not written again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import uuid4

import pydantic_core

from graftq.errors import InvalidEntity
from graftq.registry import containers
from graftq.registry.tree import READ_DEPTH, Node, encode, nodes, own_data, too_deep


@dataclass(frozen=True)
class Version:
    """A new version document to write."""

    ecs_id: str
    lineage_id: str
    parent_id: str | None
    doc: dict[str, Any]
    raw: str


@dataclass
class Plan:
    """Everything one commit writes, and the heads it expects to find."""

    roots: list[str] = field(default_factory=list)
    new: list[Version] = field(default_factory=list)
    expect: dict[str, str | None] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan(
    trees: list[Node],
    stored: Mapping[str, dict[str, Any]],
    *,
    now: datetime,
    derived_from: str | None,
) -> Plan:
    """The versions that storing `trees` needs, given the `stored` documents of their nodes.

    `expect` maps each lineage that gets a new version to the head it must still
    have at commit time: the version it was read as, or None for a new lineage.
    """
    result = Plan(docs=dict(stored))
    done: dict[int, str] = {}
    content: dict[str, list[_Seen]] = {}
    for tree in trees:
        for node in nodes(tree):
            done[id(node)] = _version_of(node, done, content, result, now, derived_from)
        result.roots.append(done[id(tree)])
    return result


@dataclass(frozen=True)
class _Seen:
    """One content an entity id was given with in this commit, and the version it got."""

    key: tuple[Any, ...]
    version: str
    new: bool


def _version_of(
    node: Node,
    done: dict[int, str],
    content: dict[str, list[_Seen]],
    result: Plan,
    now: datetime,
    derived_from: str | None,
) -> str:
    """The version `node`'s entity is stored as: reused if unchanged, else a new one.

    An id may come more than once (the same entity through another root, or copies of
    one version): each content the stored version has is that version; at most one other
    content becomes its new version.
    """
    entity = node.entity
    kids = [[list(path), done[id(kid)]] for path, kid in node.kids]
    data = own_data(entity, [path for path, _ in node.kids])
    key = (type(entity).graftq_type, data, kids)
    ecs_id = str(entity.ecs_id)
    seen = content.setdefault(ecs_id, [])
    for earlier in seen:
        if _same_content(earlier.key, key):  # the same content again
            return earlier.version
    old = result.docs.get(ecs_id)
    if old is not None and _same_content((old["type"], old["data"], old["kids"]), key):
        seen.append(_Seen(key, ecs_id, new=False))
        return ecs_id
    if any(earlier.new for earlier in seen):
        raise InvalidEntity(
            f"entity {ecs_id} is given changed in two different ways in one commit; "
            "a version has one successor per commit: store them one at a time"
        )
    version = _new_version(entity.lineage_id, ecs_id, old, key, now, derived_from)
    _expect(result, version.lineage_id, version.parent_id)
    result.new.append(version)
    result.docs[version.ecs_id] = version.doc
    seen.append(_Seen(key, version.ecs_id, new=True))
    return version.ecs_id


def _same_content(stored: tuple[Any, ...], given: tuple[Any, ...]) -> bool:
    """Whether two (type, data, kids) keys are one content.

    Not `==` on the data: it calls ``1``, ``1.0`` and ``True`` equal (an edit between them
    was dropped) and NaN unequal to itself (an unchanged entity got a new version). Equal
    JSON text decides at Rust speed; only text that differs while `==` holds (another
    dict key order, or such a type change) takes the typed walk.
    """
    if stored[0] != given[0] or stored[2] != given[2]:
        return False
    old, new = stored[1], given[1]
    if pydantic_core.to_json(old) == pydantic_core.to_json(new):
        return True
    return bool(old == new) and containers.same(old, new)


def _new_version(
    lineage_id: Any,
    ecs_id: str,
    old: dict[str, Any] | None,
    key: tuple[Any, ...],
    now: datetime,
    derived_from: str | None,
) -> Version:
    if old is None:  # never stored: the object's own ids start a new lineage
        new_id, lineage, parent = ecs_id, str(lineage_id), None
        if lineage == new_id:
            raise InvalidEntity(f"entity {ecs_id} has lineage_id equal to its ecs_id; they differ")
    else:
        new_id, lineage, parent = str(uuid4()), old["lineage_id"], ecs_id
    type_name, data, kids = key
    doc = {
        "type": type_name,
        "ecs_id": new_id,
        "lineage_id": lineage,
        "parent_id": parent,
        "created_at": now.isoformat(),
        "derived_from": derived_from,
        "kids": kids,
        "data": data,
    }
    try:
        text = encode(doc)
    except pydantic_core.PydanticSerializationError as exc:  # e.g. a str with a lone surrogate
        raise InvalidEntity(
            f"{type_name} {ecs_id}: its data cannot be stored as JSON text: {exc}"
        ) from None
    if text.count("[") + text.count("{") > READ_DEPTH:  # fewer brackets cannot nest deeper
        _check_readable(text, type_name, ecs_id)
    return Version(new_id, lineage, parent, doc, text)


def _check_readable(text: str, type_name: str, ecs_id: str) -> None:
    """A document pydantic's JSON parser reads back (it stops at 200 levels of nesting, and
    a stored version must always be readable: SPEC section 3), else `InvalidEntity`."""
    try:
        pydantic_core.from_json(text)
    except ValueError as exc:
        raise InvalidEntity(too_deep(type_name, ecs_id, exc)) from None


def _expect(result: Plan, lineage_id: str, parent_id: str | None) -> None:
    if lineage_id in result.expect:
        raise InvalidEntity(
            f"two versions of lineage {lineage_id} in one commit; store them one at a time"
        )
    result.expect[lineage_id] = parent_id
