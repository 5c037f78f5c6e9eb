"""What comes back: the entities in a return value, and its recorded form.

A return value's *root* entities are those not inside another entity: the
value itself, or items of (nested) lists, tuples and dict values. They are
committed; the recorded result names each by its index in the execution's
`outputs`, so a replay rebuilds the same typed value from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pydantic_core

from graftq.registry.entity import Entity
from graftq.registry.store import EntityRegistry
from graftq.tasks.callables import CallableInfo


def root_entities(value: Any) -> list[Entity]:
    """The root entities of a return value, in document order."""
    return list(_roots(value))


def _roots(value: Any) -> Iterator[Entity]:
    if isinstance(value, Entity):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _roots(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _roots(item)


def substitute(value: Any, replace: Callable[[Entity], Any]) -> Any:
    """`value` with each root entity replaced, containers rebuilt with their own types."""
    if isinstance(value, Entity):
        return replace(value)
    if isinstance(value, list | tuple):
        items = [substitute(item, replace) for item in value]
        return items if isinstance(value, list) else type(value)(items)
    if isinstance(value, dict):
        return {key: substitute(item, replace) for key, item in value.items()}
    return value


def with_stored(value: Any, stored: list[Entity]) -> Any:
    """`value` with its root entities swapped for their stored copies (same order)."""
    copies = iter(stored)
    return substitute(value, lambda _: next(copies))


_OUTPUT = "\x00graftq.output"


def recorded(value: Any) -> Any:
    """JSON data for the execution record: root entity i becomes an `outputs[i]` marker."""
    count = iter(range(1 << 62))
    marked = substitute(value, lambda _: {_OUTPUT: next(count)})
    return pydantic_core.to_jsonable_python(marked, fallback=repr)


def replay(store: EntityRegistry, info: CallableInfo, result: Any, outputs: list[str]) -> Any:
    """The typed value of a recorded result, entities loaded at their committed versions."""
    entities = store.get_many(outputs) if outputs else []
    return info.output_adapter.validate_python(_unmark(result, entities))


def _unmark(value: Any, outputs: list[Entity]) -> Any:
    if isinstance(value, dict):
        if _OUTPUT in value:
            return outputs[value[_OUTPUT]]
        return {key: _unmark(item, outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [_unmark(item, outputs) for item in value]
    return value
