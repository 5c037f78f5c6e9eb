"""What comes back: a return value's entities, its recorded form, and its replay.

A return value's *root* entities are those not inside another entity: the value
itself, items of (nested) containers, and entities held by plain (non-Entity)
models. They are committed. The execution record keeps the value as typed JSON
(`encoding`) with root entity i replaced by an ``output`` tag naming `outputs[i]`,
so a replay — and the value `execute` or `Job.get` returns — is rebuilt with the
same classes and the committed versions of its entities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic

from graftq.errors import InvalidResult, ReturnTypeError
from graftq.registry.entity import Entity
from graftq.registry.overlay import restamped
from graftq.registry.store import EntityRegistry
from graftq.tasks import encoding


@dataclass(frozen=True)
class Recorded:
    """A return value as the execution records it, and its root entities in order."""

    data: Any
    entities: list[Entity]


def record(value: Any) -> Recorded:
    """The recorded form of `value`: typed JSON with each root entity an output tag."""
    found: list[Entity] = []

    def output(entity: Entity) -> Any:
        found.append(entity)
        return {encoding.TAG: "output", "i": len(found) - 1}

    return Recorded(encoding.encode(value, entity=output), found)


def unrecordable(name: str, error: encoding.EncodingError) -> ReturnTypeError:
    """The error for a value callable `name` returned that graftq cannot record."""
    return ReturnTypeError(f"callable {name!r} returned a value graftq cannot record: {error}")


def invalid(name: str, error: pydantic.ValidationError) -> InvalidResult:
    """The error for an entity callable `name` returned that the store refused: `error`,
    its title naming the callable."""
    article = "an" if error.title[:1].lower() in "aeiou" else "a"
    return InvalidResult(
        f"callable {name!r} returned {article} {error.title}",
        error.errors(include_url=False),
    )


def carried(name: str, value: Any) -> bytes:
    """What callable `name` returned, as it crosses from its isolated child to the caller:
    typed JSON (pickled where it has no typed form), each entity the body stored
    restamped (`overlay.restamped`). A value not even pickle carries is a
    ReturnTypeError, as it is without isolation (which records it, or fails to)."""
    try:
        return encoding.dumps(restamped(value), pickles=True)
    except encoding.EncodingError as exc:
        raise unrecordable(name, exc) from None


def rebuild(data: Any, entities: list[Entity]) -> Any:
    """The value a record describes, with `entities` as its outputs."""
    return encoding.decode(data, outputs=entities)


def replay(store: EntityRegistry, data: Any, outputs: list[str]) -> Any:
    """The value of a recorded result, entities loaded at their committed versions."""
    return rebuild(data, store.get_many(outputs) if outputs else [])
