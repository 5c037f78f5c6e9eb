"""The `Entity` base model, its identity fields, and the registry of Entity classes.

Stored documents name their class by a stable type name; on load the class is
looked up here, never imported from a module named by data in Redis.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from graftq.errors import UnknownEntityType

IDENTITY_FIELDS = frozenset({"ecs_id", "lineage_id", "parent_id", "created_at", "derived_from"})

_ENTITY_TYPES: dict[str, type[Entity]] = {}


def _now() -> datetime:
    return datetime.now(UTC)


class Entity(BaseModel):
    """A Pydantic model whose every stored change is a new immutable version.

    The identity fields are set by the store; users never need to set them.
    Subclasses are registered under `graftq_type` (default: module and
    qualified class name); set it explicitly to keep stored data readable
    after moving the class to another module.
    """

    model_config = ConfigDict(validate_default=False)

    graftq_type: ClassVar[str] = "graftq.Entity"

    ecs_id: UUID = Field(default_factory=uuid4, description="id of this exact version")
    lineage_id: UUID = Field(default_factory=uuid4, description="id shared by all versions")
    parent_id: UUID | None = Field(default=None, description="the version this one came from")
    created_at: datetime = Field(default_factory=_now, description="UTC time it was stored")
    derived_from: str | None = Field(default=None, description="id of the producing execution")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "graftq_type" not in cls.__dict__:
            cls.graftq_type = _type_name(cls)
        # A redefinition (module reload, a class made in a function) replaces the old one.
        _ENTITY_TYPES[cls.graftq_type] = cls


_ENTITY_TYPES[Entity.graftq_type] = Entity


def _type_name(cls: type[Entity]) -> str:
    """Module and qualified name; for a parametrized generic (`Holder[Leaf]`), its origin's
    type name and its arguments' — pydantic gives such a class the module of whichever code
    first writes it, which differs from one process to the next."""
    generic = cls.__pydantic_generic_metadata__
    origin = generic["origin"]
    if origin is None:
        return f"{cls.__module__}.{cls.__qualname__}"
    args = ", ".join(_argument_name(arg) for arg in generic["args"])
    return f"{typing.cast(type[Entity], origin).graftq_type}[{args}]"


def _argument_name(arg: Any) -> str:
    if isinstance(arg, type) and issubclass(arg, Entity):
        return arg.graftq_type
    if isinstance(arg, type):
        return (
            arg.__qualname__
            if arg.__module__ == "builtins"
            else f"{arg.__module__}.{arg.__qualname__}"
        )
    return repr(arg)  # list[int], Leaf | None, ...: typing's repr names modules


def entity_class(type_name: str) -> type[Entity]:
    """The Entity class registered under `type_name`."""
    try:
        return _ENTITY_TYPES[type_name]
    except KeyError:
        raise UnknownEntityType(
            f"stored entity type {type_name!r} is not defined in this process; "
            "import the module that defines it before loading"
        ) from None


def register(cls: type[Entity]) -> None:
    """Make `cls` the class of its type name (what its definition does), again.

    cloudpickle rebuilds a class that travels by value (one made in a function or in
    `__main__`, with a published function) from a skeleton that is defined first, under
    another name, and then given the class's own: that skeleton is what its definition
    registered. Loading a second function that names the class gives back the class
    already rebuilt, after defining yet another skeleton. So whoever loads such a
    function registers the classes it names itself.
    """
    _ENTITY_TYPES[cls.graftq_type] = cls


def entity_classes(schema: Any) -> Iterator[type[Entity]]:
    """Every Entity class a pydantic core schema names, at any depth."""
    for item in schema_nodes(schema):
        cls = item.get("cls")
        if isinstance(cls, type) and issubclass(cls, Entity):
            yield cls


def schema_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every dict of a pydantic core schema, at any depth (definitions included)."""
    todo = [schema]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            yield item
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
