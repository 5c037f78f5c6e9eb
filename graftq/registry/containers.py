"""The one walk over plain containers, so every pass over values agrees on what they are.

Containers are lists, tuples (named tuples included) and dicts; everything else —
entities and other models included — is a leaf. A path step is a list or tuple
index or a dict key. Rebuilt containers keep their kind: a list stays a list, a
tuple stays a tuple of the same class, a dict keeps its key order. Entity trees,
references in inputs, entities in return values and the typed result encoding all
walk through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from pydantic import BaseModel

from graftq.errors import InvalidEntity

PathStep = Hashable
Path = tuple[PathStep, ...]


def is_container(value: Any) -> bool:
    return isinstance(value, list | tuple | dict)


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every leaf under `value` with its path, in document order.

    A container inside itself is an `InvalidEntity` naming both paths (SPEC section 2:
    no cycles), not a RecursionError.
    """
    return _leaves(value, path, {})


def _leaves(value: Any, path: Path, walking: dict[int, Path]) -> Iterator[tuple[Path, Any]]:
    """`leaves`, with the path of each container being walked by its id."""
    if not is_container(value):
        yield path, value
        return
    if id(value) in walking:
        raise InvalidEntity(
            f"cycle: the {type(value).__name__} at {dotted(walking[id(value)])} contains "
            f"itself at {dotted(path)}"
        )
    walking[id(value)] = path
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for step, item in items:
        yield from _leaves(item, (*path, step), walking)
    del walking[id(value)]


def map_leaves(value: Any, change: Callable[[Any], Any]) -> Any:
    """`value` with every leaf replaced by `change(leaf)`, containers rebuilt in kind."""
    if isinstance(value, dict):
        return {key: map_leaves(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [map_leaves(item, change) for item in value]
    if isinstance(value, tuple):
        return rebuild_tuple(type(value), [map_leaves(item, change) for item in value])
    return change(value)


def dotted(path: Path, top: str = "the top") -> str:
    """`path` as references write it (``a.0.b``); `top` for the empty path."""
    return ".".join(str(step) for step in path) or top


def rebuild_tuple(kind: type[tuple[Any, ...]], items: list[Any]) -> tuple[Any, ...]:
    """A tuple of class `kind` holding `items` (a named tuple takes them by position)."""
    if kind is tuple:
        return tuple(items)
    if hasattr(kind, "_fields"):
        return kind(*items)
    return kind(items)


def same(left: Any, right: Any) -> bool:
    """Equal values of exactly the same types, all the way down.

    Stricter than ``==``, which calls ``True == 1 == 1.0`` and ``-0.0 == 0.0`` (values
    that read back differently) equal, and NaN unequal to itself (which reads back the same).
    Dict key order does not count, as with ``==``.
    """
    return difference(left, right) is None


def difference(left: Any, right: Any, path: Path = ()) -> tuple[Path, Any, Any] | None:
    """Where `left` and `right` first differ as `same` compares them: the path (under
    `path`) and the two values there; None if they are the same."""
    stack = [(left, right, path)]
    while stack:
        a, b, at = stack.pop()
        if type(a) is not type(b):
            return at, a, b
        if isinstance(a, dict):
            if a.keys() != b.keys():
                return at, a, b
            stack.extend((a[key], b[key], (*at, key)) for key in a)
        elif isinstance(a, list | tuple):
            if len(a) != len(b):
                return at, a, b
            stack.extend((x, y, (*at, i)) for i, (x, y) in enumerate(zip(a, b, strict=True)))
        elif isinstance(a, BaseModel):
            stack.append((a.__dict__, b.__dict__, at))
            stack.append((a.__pydantic_extra__, b.__pydantic_extra__, at))
        elif isinstance(a, float):
            if not _same_float(a, b):
                return at, a, b
        elif a != b:
            return at, a, b
    return None


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a):
        return math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
