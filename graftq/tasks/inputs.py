"""Preparing a call's input: store Entity objects, resolve references, validate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graftq.registry import references
from graftq.registry.entity import Entity
from graftq.registry.store import EntityRegistry
from graftq.tasks import bounds
from graftq.tasks.callables import CallableInfo


@dataclass(frozen=True)
class Prepared:
    """A validated call: its keyword arguments and exactly which versions it reads."""

    info: CallableInfo
    given: dict[str, Any]
    pinned: dict[str, Any]
    kwargs: dict[str, Any]
    by_lineage: bool

    def recorded_inputs(self) -> dict[str, Any]:
        """The inputs as the Execution records them: a whole entity by its version id,
        a field by its pinned reference (`@<ecs_id>.path`), a literal as itself."""
        recorded: dict[str, Any] = _record(self.pinned)
        return recorded

    def memo_hash(self) -> str:
        """Hash of the pinned input: the memoization key next to the callable version."""
        canonical = json.dumps(self.pinned, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def store_entities(
    store: EntityRegistry, input_data: dict[str, Any], found: list[Entity]
) -> dict[str, Any]:
    """`input_data` with its Entity objects (`found`) stored and replaced by pinned references.

    An unstored entity is stored as a first version, a modified one is forked
    (a branch if its head moved): all in one transaction.
    """
    stored = iter(store.commit(found, branch=True).entities)
    swapped: dict[str, Any] = _swap(dict(input_data), lambda _: f"@{next(stored).ecs_id}")
    return swapped


def _swap(data: Any, on_entity: Any) -> Any:
    if isinstance(data, Entity):
        return on_entity(data)
    if isinstance(data, str) and data.startswith("@"):
        return data
    if isinstance(data, dict):
        return {key: _swap(value, on_entity) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_swap(value, on_entity) for value in data]
    return data


def _record(pinned: Any) -> Any:
    if isinstance(pinned, str) and pinned.startswith("@"):
        parsed = references.parse(pinned)
        if isinstance(parsed, references.Reference) and not parsed.path:
            return parsed.uuid
        return parsed if isinstance(parsed, str) else pinned
    if isinstance(pinned, dict):
        return {key: _record(value) for key, value in pinned.items()}
    if isinstance(pinned, list):
        return [_record(value) for value in pinned]
    return pinned


def prepare(store: EntityRegistry, info: CallableInfo, input_data: Mapping[str, Any]) -> Prepared:
    """Resolve and validate; raises before anything runs, is enqueued or is written.

    Entity objects among the values are validated as given first, and only
    then stored, so bad input leaves no trace in the store.
    """
    if not isinstance(input_data, Mapping):
        raise TypeError(
            f"input must be a dict of parameter name → value, got {type(input_data).__name__}"
        )
    given = bounds.carried(store, info, input_data)  # too deep or not JSON: InvalidInput
    found: list[Entity] = []
    _swap(given, found.append)
    resolution = references.resolve(store, given)
    kwargs = info.validate_input(resolution.value)
    if found:  # now that the input is known good, store the objects and read them back
        given = store_entities(store, given, found)
        resolution = references.resolve(store, given)
        kwargs = info.validate_input(resolution.value)
    by_lineage = any(ref.by_lineage for ref in resolution.references)
    return Prepared(info, given, resolution.pinned, kwargs, by_lineage)
