"""Preparing a call's input: store Entity objects, resolve references, validate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

from graftq.registry import containers, references
from graftq.registry.entity import Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.store import EntityRegistry
from graftq.tasks import encoding
from graftq.tasks.callables import CallableInfo


@dataclass(frozen=True)
class Prepared:
    """A validated call: its keyword arguments and exactly which versions it reads."""

    info: CallableInfo
    given: dict[str, Any]
    pinned: dict[str, Any]
    kwargs: dict[str, Any]
    read_by_head: frozenset[str]

    @property
    def by_lineage(self) -> bool:
        """Whether any input was read by lineage reference (the head at resolution time)."""
        return bool(self.read_by_head)

    def recorded_inputs(self) -> dict[str, Any]:
        """The inputs as the Execution records them: a whole entity by its version id,
        a field by its pinned reference (`@<ecs_id>.path`), a literal as itself."""
        recorded: dict[str, Any] = _record(self.pinned)
        return recorded

    def memo_hash(self) -> str:
        """Hash of the pinned input: the memoization key next to the callable version."""
        canonical = json.dumps(self.pinned, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def as_input(input_data: Any) -> dict[str, Any]:
    """A private dict of the input; anything but a mapping is a TypeError."""
    if not isinstance(input_data, Mapping):
        raise TypeError(
            f"input must be a dict of parameter name → value, got {type(input_data).__name__}"
        )
    return dict(input_data)


def input_digest(info: CallableInfo, input_data: Mapping[str, Any]) -> str:
    """What one execution id stands for: the callable and its input exactly as given.

    A redelivered job carries the same digest; another job reusing the id does not.
    """
    canonical = json.dumps(
        [info.name, encoding.encode(as_input(input_data))], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def store_entities(
    store: EntityRegistry, input_data: dict[str, Any], found: list[Entity]
) -> dict[str, Any]:
    """`input_data` with its Entity objects (`found`) stored and replaced by pinned references.

    An unstored entity is stored as a first version, a modified one is forked
    (a branch if its head moved): all in one transaction.
    """
    stored = iter(store.commit(found, branch=True).entities)
    swapped: dict[str, Any] = containers.map_leaves(
        input_data, lambda leaf: f"@{next(stored).ecs_id}" if isinstance(leaf, Entity) else leaf
    )
    return swapped


def _record(pinned: Any) -> Any:
    def change(leaf: Any) -> Any:
        if not (isinstance(leaf, str) and leaf.startswith("@")):
            return leaf
        parsed = references.parse(leaf)
        if isinstance(parsed, references.Reference) and not parsed.path:
            return parsed.uuid
        return parsed if isinstance(parsed, str) else leaf

    return containers.map_leaves(pinned, change)


@dataclass(frozen=True)
class Done:
    """The execution asked about in `prepare(..., replay_of=...)` already succeeded."""

    execution: Execution


@overload
def prepare(
    store: EntityRegistry, info: CallableInfo, input_data: Mapping[str, Any]
) -> Prepared: ...


@overload
def prepare(
    store: EntityRegistry,
    info: CallableInfo,
    input_data: Mapping[str, Any],
    *,
    replay_of: str | None,
) -> Prepared | Done: ...


def prepare(
    store: EntityRegistry,
    info: CallableInfo,
    input_data: Mapping[str, Any],
    *,
    replay_of: str | None = None,
) -> Prepared | Done:
    """Resolve and validate; raises before anything runs, is enqueued or is written.

    Entity objects among the values are validated as given first, and only
    then stored, so bad input leaves no trace in the store. With `replay_of`, that
    execution's record is read in the same round trip as the inputs; if it
    succeeded, `Done` comes back and nothing is validated.
    """
    given = as_input(input_data)
    found = [leaf for _, leaf in containers.leaves(given) if isinstance(leaf, Entity)]
    resolution = references.resolve(store, given, execution_id=replay_of)
    done = resolution.execution
    if done is not None and done.status is ExecutionStatus.SUCCESS:
        return Done(done)
    kwargs = info.validate_input(resolution.value)
    if found:  # now that the input is known good, store the objects and read them back
        given = store_entities(store, given, found)
        resolution = references.resolve(store, given)
        kwargs = info.validate_input(resolution.value)
    return Prepared(info, given, resolution.pinned, kwargs, resolution.read_by_head)
