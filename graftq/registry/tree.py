"""Entity trees: walking them, and the one-node documents they are stored as.

A version document holds one entity's own fields; each sub-entity is cut out
and named by its `ecs_id` in `kids` (its path inside the data, then its id),
so an unchanged sub-entity is referenced, never copied. Documents are JSON::

    {"type": "app.Student", "ecs_id": "...", "lineage_id": "...",
     "parent_id": "..." | null, "created_at": "...", "derived_from": "..." | null,
     "kids": [[["address"], "<ecs_id>"], [["friends", 0], "<ecs_id>"]],
     "data": {"name": "Ada", "friends": [], ...}}
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from graftq.errors import CorruptVersion, InvalidEntity
from graftq.registry import containers
from graftq.registry.containers import dotted
from graftq.registry.entity import IDENTITY_FIELDS, Entity, entity_class, schema_nodes

T = TypeVar("T")
# Levels of nesting a version document may have: pydantic's JSON parser reads no deeper
# than 200 (its serializer writes deeper, up to about 255), and the document adds its own.
READ_DEPTH = 190
PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(eq=False)
class Node:
    """One entity of a tree, with its direct sub-entities in document order."""

    entity: Entity
    kids: list[tuple[Path, Node]] = field(default_factory=list)


def walk(root: Any) -> Node:
    """The tree under `root`; a cycle or one object twice → `InvalidEntity`."""
    if not isinstance(root, Entity):
        raise InvalidEntity(
            f"only Entity instances can be stored, got {type(root).__name__}: {root!r:.80}"
        )
    return _walk(root, (), on_path={}, seen={})


def _walk(entity: Entity, at: Path, on_path: dict[int, Path], seen: dict[int, Path]) -> Node:
    """The tree under `entity`, which sits at path `at` from the root.

    Kids keep paths relative to their parent (what documents store); messages give
    paths from the root, in the dotted form references use.
    """
    node = Node(entity)
    on_path[id(entity)] = at
    for path, sub in _sub_entities(entity):
        where = (*at, *path)
        if id(sub) in on_path:
            raise InvalidEntity(
                f"cycle: entity {sub.ecs_id} at {dotted(on_path[id(sub)], 'the root')} "
                f"contains itself at {dotted(where)}"
            )
        if id(sub) in seen:
            raise InvalidEntity(
                f"entity object {sub.ecs_id} appears twice in one tree "
                f"(at {dotted(seen[id(sub)])} and {dotted(where)}); store a copy instead"
            )
        seen[id(sub)] = where
        node.kids.append((path, _walk(sub, where, on_path, seen)))
    del on_path[id(entity)]
    return node


def roots(value: Any) -> Iterator[Entity]:
    """The entities in `value` that no other entity in it holds: `value` itself, or those
    in its containers and plain models (each the root of its `walk`)."""
    for _, entity in _entities_in(value, (), set()):
        yield entity


def _sub_entities(entity: Entity) -> Iterator[tuple[Path, Entity]]:
    """The entities in `entity`'s fields — its extra ones (``extra="allow"``) included —
    in containers and in plain (non-Entity) models, at any depth."""
    for name in _field_names(entity):
        if name not in IDENTITY_FIELDS:
            yield from _entities_in(getattr(entity, name), (name,), set())


def _field_names(model: BaseModel) -> list[str]:
    return [*type(model).model_fields, *(model.__pydantic_extra__ or ())]


def _entities_in(value: Any, at: Path, models: set[int]) -> Iterator[tuple[Path, Entity]]:
    """The entities under `value` (at path `at`); `models`: the plain models being walked."""
    for path, leaf in containers.leaves(value, at):
        if isinstance(leaf, Entity):
            _check_keys(value, path[len(at) :])
            yield typing.cast(Path, path), leaf
        elif isinstance(leaf, BaseModel) and id(leaf) not in models:  # a model inside itself
            models.add(id(leaf))  # holds no entity the walk could reach a second time
            for name in _field_names(leaf):
                yield from _entities_in(
                    getattr(leaf, name), (*typing.cast(Path, path), name), models
                )
            models.discard(id(leaf))


def _check_keys(value: Any, steps: containers.Path) -> None:
    """Stored paths are JSON: a dict key on the way to an entity must be a str."""
    spot = value
    for step in steps:
        if isinstance(spot, dict) and not isinstance(step, str):
            raise InvalidEntity(f"dict keys holding entities must be str, got {step!r}")
        spot = spot[step]


def nodes(root: Node) -> Iterator[Node]:
    """Every node of the tree, children before their parent."""
    for _, kid in root.kids:
        yield from nodes(kid)
    yield root


def own_data(entity: Entity, kid_paths: list[Path]) -> dict[str, Any]:
    """The entity's own fields as JSON data: each sub-entity a null placeholder.

    Placeholders keep list positions and dict key order exactly; identity and
    computed fields are left out (the store sets the one, the model derives the other).
    """
    if kid_paths:
        fields = dict.fromkeys(str(path[0]) for path in kid_paths)
        entity = entity.model_copy(update={name: _blank(getattr(entity, name)) for name in fields})
    exclude = set(IDENTITY_FIELDS) | set(type(entity).model_computed_fields)
    try:
        # warnings=False: a placeholder None where the annotation wants an Entity is intended.
        data: dict[str, Any] = entity.model_dump(
            mode="json", exclude=exclude, by_alias=False, warnings=False
        )
    except UnicodeDecodeError:
        raise InvalidEntity(_not_utf8_message(entity)) from None
    except pydantic_core.PydanticSerializationError as exc:  # a leaf or a serializer's own
        raise InvalidEntity(_no_json_form_message(entity, exc)) from exc
    except ValueError as exc:  # pydantic's plain "Maximum serialization depth exceeded"
        raise InvalidEntity(too_deep(type(entity).graftq_type, str(entity.ecs_id), exc)) from None
    if not _may_hold_sets(type(entity)):  # most classes: no walk (it costs ≈ 4 µs a node)
        return data
    return typing.cast(dict[str, Any], _sorted_sets(entity, data))


@functools.cache
def _may_hold_sets(cls: type[BaseModel]) -> bool:
    """Whether a `cls` instance may hold a set: its schema names one at some depth, or a
    value of any type (an `Any` field, extra fields)."""
    if cls.model_config.get("extra") == "allow":
        return True
    kinds = ("set", "frozenset", "any")
    return any(node.get("type") in kinds for node in schema_nodes(cls.__pydantic_core_schema__))


def _sorted_sets(value: Any, dumped: Any) -> Any:
    """`dumped`, the JSON form of `value`, with each set's list sorted by its items' JSON.

    A set iterates in its hash table's order, which its values do not decide: a set that
    shrank, or one of str in another process (str hashes are salted per process), lists
    the same items otherwise, and an unchanged entity would look changed. The walk pairs
    values with their JSON form and leaves alone whatever does not pair (a custom
    serializer's own shape).
    """
    if isinstance(value, set | frozenset) and isinstance(dumped, list):
        items = [_sorted_sets(v, d) for v, d in zip(value, dumped, strict=False)]
        return sorted(items, key=pydantic_core.to_json) if len(items) == len(dumped) else dumped
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_sorted_sets(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict) and isinstance(dumped, dict) and len(value) == len(dumped):
        pairs = zip(value.values(), dumped.items(), strict=True)
        return {key: _sorted_sets(v, d) for v, (key, d) in pairs}
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        names = set(_field_names(value))
        return {
            key: _sorted_sets(getattr(value, key), d) if key in names else d
            for key, d in dumped.items()
        }
    return dumped


def too_deep(type_name: str, ecs_id: str, exc: Exception) -> str:
    return (
        f"{type_name} {ecs_id}: its data nests too deep to be stored and read back as JSON "
        f"(about {READ_DEPTH} levels at most): {exc}"
    )


def _not_utf8_message(entity: Entity) -> str:
    # Pydantic's JSON form of bytes is UTF-8 text unless the model says otherwise. Stored
    # data keeps that default: switching it would change how existing versions read back.
    path, holder = _first_leaf(entity, (), _not_utf8) or ("", type(entity).__name__)
    where = f"at {path}" if path else "in one of its fields"
    return (
        f"{type(entity).__name__} {entity.ecs_id}: the bytes {where} are not UTF-8, the text "
        "pydantic's JSON mode stores bytes as by default; to store any bytes, set "
        'model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64") '
        f"on {holder}"
    )


def _no_json_form_message(entity: Entity, exc: Exception) -> str:
    """A value an `Any` field admits (`object()`, a function) that JSON cannot store, or a
    serializer of the model's that raised: pydantic's error names neither entity nor field."""
    path, _ = _first_leaf(entity, (), _no_json_form) or (_failing_field(entity), "")
    where = f"the value at {path}" if path else "one of its fields"
    return (
        f"{type(entity).__name__} {entity.ecs_id}: {where} has no JSON form ({exc}); "
        "an entity stores only what pydantic can write as JSON"
    )


def _failing_field(entity: Entity) -> str:
    """The first field whose own dump fails (its serializer raised), or ""."""
    for name in _field_names(entity):
        try:
            entity.model_dump(mode="json", include={name}, warnings=False)
        except ValueError:
            return name
    return ""


def _first_leaf(
    model: BaseModel, at: Path, bad: Callable[[BaseModel, Any], bool]
) -> tuple[str, str] | None:
    """The dotted path of the first leaf under `model` for which `bad(holder, leaf)` holds,
    with the name of the model holding it (plain and entity models are walked into)."""
    for name in _field_names(model):
        for path, leaf in containers.leaves(getattr(model, name), (*at, name)):
            if isinstance(leaf, BaseModel):
                found = _first_leaf(leaf, typing.cast(Path, path), bad)
                if found:
                    return found
            elif bad(model, leaf):
                return dotted(typing.cast(Path, path)), type(model).__name__
    return None


def _not_utf8(holder: BaseModel, leaf: Any) -> bool:
    """Bytes that are not UTF-8, in a model that dumps bytes as UTF-8 text."""
    if not isinstance(leaf, bytes) or holder.model_config.get("ser_json_bytes", "utf8") != "utf8":
        return False
    try:
        leaf.decode()
    except UnicodeDecodeError:
        return True
    return False


def _no_json_form(_holder: BaseModel, leaf: Any) -> bool:
    try:
        pydantic_core.to_jsonable_python(leaf)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        return True
    return False


def _blank(value: Any) -> Any:
    """`value` with each entity in it a None, inside plain models too."""

    def blank(leaf: Any) -> Any:
        if isinstance(leaf, Entity):
            return None
        if isinstance(leaf, BaseModel):
            return leaf.model_copy(update={n: _blank(getattr(leaf, n)) for n in _field_names(leaf)})
        return leaf

    return containers.map_leaves(value, blank)


def encode(doc: Mapping[str, Any]) -> str:
    return pydantic_core.to_json(doc).decode()


_HEADER = ("type", "ecs_id", "lineage_id", "parent_id", "created_at", "derived_from")


def decode_doc(ecs_id: str, raw: str | bytes) -> dict[str, Any]:
    """Parse one stored document; anything unreadable → `CorruptVersion` naming the id."""
    try:
        doc = pydantic_core.from_json(raw)
        if not isinstance(doc, dict) or not isinstance(doc["data"], dict):
            raise TypeError("not a version document")
        missing = [name for name in _HEADER if name not in doc]
        if missing or not isinstance(doc["type"], str):
            raise TypeError(f"missing or bad members: {', '.join(missing) or 'type'}")
        for path, kid in doc["kids"]:
            if not isinstance(path, list) or not path or not isinstance(kid, str):
                raise TypeError("bad kid entry")
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptVersion(f"stored version {ecs_id} is unreadable: {exc}") from None
    return doc


def build(
    ecs_id: str, docs: Mapping[str, dict[str, Any]], fresh: AbstractSet[str] = frozenset()
) -> Entity:
    """A fresh Entity tree for version `ecs_id` from parsed documents.

    A stored document that does not validate is a `CorruptVersion`; one of the
    `fresh` documents a commit is about to write raises pydantic's `ValidationError`.
    """
    return _assemble(
        ecs_id, docs, lambda doc, data: _validated(doc, data, doc["ecs_id"] in fresh), fresh
    )


def as_data(ecs_id: str, docs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Version `ecs_id` as plain JSON data, each entity with its "type": no class needed."""
    return _assemble(ecs_id, docs, lambda doc, data: {"type": doc["type"], **data})


def _assemble(
    ecs_id: str,
    docs: Mapping[str, dict[str, Any]],
    make: Callable[[dict[str, Any], Any], T],
    fresh: AbstractSet[str] = frozenset(),
) -> T:
    doc = docs.get(ecs_id)
    if doc is None:
        raise CorruptVersion(f"stored version {ecs_id} is missing from the store")
    if ecs_id in fresh and not doc["kids"]:  # just made by the commit, built once: no copy
        data = dict(doc["data"])
    else:  # a private deep copy: the doc may be built again (one copy per use)
        data = pydantic_core.from_json(pydantic_core.to_json(doc["data"]))
    try:
        for path, kid in doc["kids"]:
            _place(data, path, _assemble(kid, docs, make, fresh))
    except (LookupError, TypeError) as exc:
        raise CorruptVersion(
            f"stored version {ecs_id}: a sub-entity path is wrong: {exc}"
        ) from None
    for name in IDENTITY_FIELDS:
        data[name] = doc[name]
    return make(doc, data)


def _validated(doc: dict[str, Any], data: dict[str, Any], fresh: bool) -> Entity:
    """The entity `data` (its JSON form, sub-entities built) makes, validated as its class.

    Not strictly, whatever the class says: its JSON form holds a datetime or a UUID as
    text, a tuple as a list and an enum as its value, which strict validation refuses.
    """
    cls = entity_class(doc["type"])
    try:
        return cls.model_validate(data, by_alias=False, by_name=True, strict=False)
    except ValidationError as exc:
        if fresh:
            raise
        raise CorruptVersion(
            f"stored version {doc['ecs_id']} does not validate as {cls.__name__}: {exc}"
        ) from None


def _place(data: dict[str, Any], path: list[PathPart], value: Any) -> None:
    spot: Any = data
    for part in path[:-1]:
        spot = spot[part]
    spot[path[-1]] = value
