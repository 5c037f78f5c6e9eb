"""Typed JSON: a value with its concrete classes, as JSON data.

Return values cross the fork and live in Execution records in this form, so a value
annotated `-> Entity`, a base class, `-> Any` or `-> dict` comes back with the
classes that were returned, never rebuilt from the annotation (SPEC section 5).

JSON scalars, lists and dicts with str keys stand for themselves. Everything else is
a tag, a dict whose key ``"\\x00"`` names the kind::

    {"\\x00": "model", "c": class, "v": {"d": fields, "s": set, "x": extra, "p": private}}
    {"\\x00": "tuple" | "set" | "frozenset", "v": [...]}     (a named tuple adds "c")
    {"\\x00": "dict", "v": [[key, value], ...]}   (keys not str, not UTF-8 or "\\x00...")
    {"\\x00": "enum", "c": class, "v": value}
    {"\\x00": "datetime" | "date" | "time" | "uuid" | "decimal" | "path" | "float", "v": str}
    {"\\x00": "timedelta", "v": [days, seconds, microseconds]}
    {"\\x00": "bytes", "v": base64}
    {"\\x00": "same", "i": n}        the n-th model again (shared objects stay shared)
    {"\\x00": "output", "i": n}      an entity replaced by `encode(..., entity=...)`
    {"\\x00": "pydantic", "c": class, "v": json}   any other value pydantic carries
    {"\\x00": "pickle", "v": base64} anything else, only where `pickles=True` (the fork)

A model is rebuilt as pickle would (``__setstate__``, no validators run), so the
value is the one that was returned. Any other value (a dataclass, an `IPv4Address`,
a `complex`, a `deque`...) is carried by a pydantic `TypeAdapter` of its own class,
dumped as JSON and validated back, if that gives an equal value of the same class
and holds no entity (an entity there would not be committed). A value with no
typed form, a list, dict, tuple or set inside itself (only models may form
cycles), and a value whose typed JSON would nest deeper than `READ_DEPTH` (a record
pydantic's parser could not read back), is an `EncodingError`, except across the fork,
where it is pickled.
Classes are named by module and qualified name (Entity subclasses by their
``graftq_type``) and found only among classes this process defines: a name never
imports or calls anything else.

Records written before the pydantic tag may hold ``{"\\x00": "repr", "v": text}``
for such values; they still decode, to that text.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import pathlib
import sys
import uuid
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

import cloudpickle
import pydantic_core
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from graftq.errors import GraftError
from graftq.registry import containers
from graftq.registry.entity import Entity, entity_class, entity_classes
from graftq.registry.tree import READ_DEPTH

TAG = "\x00"
_SCALARS: dict[type, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    dt.datetime: ("datetime", dt.datetime.isoformat, dt.datetime.fromisoformat),
    dt.date: ("date", dt.date.isoformat, dt.date.fromisoformat),
    dt.time: ("time", dt.time.isoformat, dt.time.fromisoformat),
    uuid.UUID: ("uuid", str, uuid.UUID),
    decimal.Decimal: ("decimal", str, decimal.Decimal),
    float: ("float", repr, float),  # only inf and nan: finite floats are JSON
    dt.timedelta: (
        "timedelta",
        lambda d: [d.days, d.seconds, d.microseconds],
        lambda v: dt.timedelta(*v),
    ),
    bytes: ("bytes", lambda b: base64.b64encode(b).decode(), base64.b64decode),
}
_BY_KIND = {kind: load for kind, _, load in _SCALARS.values()}
_JSON_SCALARS = (str, int, bool, type(None))

EntityHook = Callable[[Entity], Any]


class EncodingError(GraftError, TypeError):
    """A value cannot be carried as typed JSON."""


def dumps(value: Any, *, pickles: bool = False) -> bytes:
    """`encode` as JSON bytes."""
    return pydantic_core.to_json(encode(value, pickles=pickles))


def loads(raw: bytes | str, *, pickles: bool = False) -> Any:
    """`decode` of JSON bytes."""
    return decode(pydantic_core.from_json(raw), pickles=pickles)


def encode(value: Any, *, entity: EntityHook | None = None, pickles: bool = False) -> Any:
    """`value` as typed JSON data.

    `entity`, if given, replaces each entity not inside another entity (its result
    is used as is); `pickles` lets values with no typed form travel by cloudpickle.
    """
    try:
        return _Encoder(entity, pickles).encode(value)
    except RecursionError:  # deeper than Python's stack, before READ_DEPTH was even reached
        raise EncodingError(_too_deep(value)) from None


def decode(data: Any, *, outputs: list[Entity] | None = None, pickles: bool = False) -> Any:
    """The value `data` encodes; `{"output": i}` tags become `outputs[i]`.

    Pickles are refused unless `pickles` (only data from our own isolated child
    may carry them, never data read back from Redis).
    """
    return _Decoder(outputs or [], pickles).decode(data)


class _Encoder:
    def __init__(self, entity: EntityHook | None, pickles: bool) -> None:
        self._entity = entity
        self._pickles = pickles
        self._models: dict[int, int] = {}  # id(model) -> its number, so sharing survives
        self._walking: set[int] = set()  # ids of the containers whose items are being encoded
        self._levels = 0  # JSON nesting of what is being encoded: it must parse back

    def encode(self, value: Any) -> Any:
        kind = type(value)
        if kind is str and not value.isascii():  # isascii is O(1): only other text is checked
            return self._text(value)
        if kind in _JSON_SCALARS or (kind is float and value - value == 0):
            return value
        if kind is list:
            return self._inside(value, lambda: [self.encode(item) for item in value])
        if kind is dict:
            if all(type(key) is str and not key.startswith(TAG) and _utf8(key) for key in value):
                return self._inside(value, lambda: {k: self.encode(v) for k, v in value.items()})
            return self._inside(value, lambda: self._tagged_dict(value), levels=3)
        if isinstance(value, BaseModel):
            if self._entity is not None and isinstance(value, Entity):
                return self._entity(value)
            if id(value) in self._models:  # the same object again (or a cycle): point back
                return {TAG: "same", "i": self._models[id(value)]}
            return self._inside(value, lambda: self._model(value), levels=3)
        return self._other(value)

    def _inside(self, container: Any, encode: Callable[[], Any], levels: int = 1) -> Any:
        """`encode()` of a container's items, which its typed JSON puts `levels` deeper.

        A container inside itself has no typed form (a model may hold itself, a plain
        container may not: SPEC section 2), nor one nested deeper than `READ_DEPTH`
        levels of JSON: pydantic's parser could not read its record back.
        """
        if id(container) in self._walking:
            cycle = EncodingError(
                f"a {type(container).__name__} contains itself, where [...] or {{...}} "
                f"shows: {container!r:.300}"
            )
            return self._untyped(container, cycle)
        if self._levels + levels > READ_DEPTH:
            return self._untyped(container, EncodingError(_too_deep(container)))
        self._walking.add(id(container))
        self._levels += levels
        encoded = encode()
        self._levels -= levels
        self._walking.discard(id(container))
        return encoded

    def _text(self, value: str) -> Any:
        """A str that is not ASCII: itself, unless a lone surrogate leaves it no UTF-8 form
        (JSON text is UTF-8: the record could not be written)."""
        if _utf8(value):
            return value
        at = next(i for i, char in enumerate(value) if "\ud800" <= char <= "\udfff")
        surrogate = EncodingError(
            f"the str {value!r:.80} holds the lone surrogate {value[at]!r} at index {at}, "
            "which has no UTF-8 form"
        )
        return self._untyped(value, surrogate)

    def _tagged_dict(self, value: dict[Any, Any]) -> Any:
        return _tag("dict", [[self.encode(k), self.encode(v)] for k, v in value.items()])

    def _tagged(self, kind: str, items: Any) -> Any:
        return _tag(kind, [self.encode(item) for item in items])

    def _tuple(self, value: tuple[Any, ...]) -> Any:
        tagged = _tag("tuple", [self.encode(item) for item in value])
        if type(value) is not tuple:
            tagged["c"] = class_name(type(value))
        return tagged

    def _model(self, model: BaseModel) -> Any:
        self._models[id(model)] = len(self._models)
        state = model.__getstate__()
        encoded = {
            "d": {name: self.encode(item) for name, item in state["__dict__"].items()},
            "s": sorted(state["__pydantic_fields_set__"]),
        }
        if state["__pydantic_extra__"] is not None:
            encoded["x"] = self.encode(state["__pydantic_extra__"])
        if self._pickles and state["__pydantic_private__"]:
            encoded["p"] = self.encode(state["__pydantic_private__"])
        return {TAG: "model", "c": class_name(type(model)), "v": encoded}

    def _other(self, value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return {TAG: "enum", "c": class_name(type(value)), "v": self.encode(value.value)}
        if isinstance(value, tuple):
            return self._inside(value, lambda: self._tuple(value), levels=2)
        if isinstance(value, set | frozenset):
            kind = "set" if isinstance(value, set) else "frozenset"
            return self._inside(value, lambda: self._tagged(kind, value), levels=2)
        if isinstance(value, str | int):  # a subclass of a JSON scalar: keep the value
            return self.encode(str(value)) if isinstance(value, str) else int(value)
        if isinstance(value, pathlib.PurePath):
            return _tag("path", str(value))
        for cls in type(value).__mro__:
            if cls in _SCALARS:
                name, dump, _ = _SCALARS[cls]
                return _tag(name, dump(value))
        try:
            return _by_pydantic(value)
        except EncodingError as exc:
            return self._untyped(value, exc)

    def _untyped(self, value: Any, reason: EncodingError) -> Any:
        """A value with no typed form: `reason` is raised, unless it may be pickled."""
        if not self._pickles:
            raise reason
        try:
            return _tag("pickle", base64.b64encode(cloudpickle.dumps(value)).decode())
        except Exception as exc:
            raise EncodingError(
                f"cannot carry a {type(value).__name__} value back from the isolated child: {exc}"
            ) from exc


def _too_deep(value: Any) -> str:
    return (
        f"a {type(value).__name__} nests too deep to be recorded: its typed JSON would pass "
        f"{READ_DEPTH} levels, deeper than pydantic's JSON parser reads back"
    )


def _utf8(text: str) -> bool:
    """Whether `text` has a UTF-8 form (no lone surrogate); a key without one goes the
    tagged way, where `_Encoder._text` names it."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _by_pydantic(value: Any) -> dict[str, Any]:
    """`value` as the JSON of a TypeAdapter of its class, if that carries it faithfully."""
    cls: type = type(value)
    name = class_name(cls)
    try:
        adapter = _adapter(cls)
        if find_class(name) is not cls:
            raise EncodingError(f"another class is named {name} in this process")
        data = adapter.dump_python(value, mode="json")
        back = adapter.validate_python(data)
        faithful = type(back) is cls and bool(back == value)
    except Exception as exc:  # no schema, a class defined in a function, pydantic errors
        raise EncodingError(f"a {name} value has no typed form: {exc}") from None
    if not faithful:
        raise EncodingError(
            f"a {name} value has no typed form: pydantic would give back {back!r:.200} "
            f"for {value!r:.200}"
        )
    return {TAG: "pydantic", "c": name, "v": data}


@lru_cache(maxsize=256)
def _adapter(cls: type) -> TypeAdapter[Any]:
    """A TypeAdapter of `cls`, whose values hold no entity (it would not be committed)."""
    adapter: TypeAdapter[Any] = TypeAdapter(cls)
    if any(entity_classes(adapter.core_schema)):
        raise EncodingError(
            f"{class_name(cls)} may hold entities, which graftq commits only directly, "
            "in lists, tuples, dicts or pydantic models"
        )
    return adapter


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {TAG: kind, "v": value}


class _Decoder:
    def __init__(self, outputs: list[Entity], pickles: bool) -> None:
        self._outputs = outputs
        self._pickles = pickles
        self._models: list[BaseModel] = []

    def decode(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.decode(item) for item in data]
        if not isinstance(data, dict):
            return data
        kind = data.get(TAG)
        if kind is None:
            return {key: self.decode(item) for key, item in data.items()}
        if kind in _BY_KIND:
            return _BY_KIND[kind](data["v"])
        method = getattr(self, "_" + str(kind), None)
        if method is None:
            raise EncodingError(f"unknown typed JSON tag {kind!r}")
        return method(data)

    def _output(self, data: dict[str, Any]) -> Entity:
        return self._outputs[int(data["i"])]

    def _model(self, data: dict[str, Any]) -> BaseModel:
        cls: type[BaseModel] = find_class(data["c"], BaseModel)
        parts = data["v"]
        model = cls.__new__(cls)
        self._models.append(model)  # before its fields, which may point back at it
        private = self.decode(parts["p"]) if "p" in parts else _private_defaults(cls)
        model.__setstate__(
            {
                "__dict__": {name: self.decode(item) for name, item in parts["d"].items()},
                "__pydantic_fields_set__": set(parts["s"]),
                "__pydantic_extra__": self.decode(parts["x"]) if "x" in parts else None,
                "__pydantic_private__": private,
            }
        )
        return model

    def _same(self, data: dict[str, Any]) -> BaseModel:
        return self._models[int(data["i"])]

    def _tuple(self, data: dict[str, Any]) -> tuple[Any, ...]:
        items = [self.decode(item) for item in data["v"]]
        kind = find_class(data["c"], tuple) if "c" in data else tuple
        return containers.rebuild_tuple(kind, items)

    def _set(self, data: dict[str, Any]) -> set[Any]:
        return {self.decode(item) for item in data["v"]}

    def _frozenset(self, data: dict[str, Any]) -> frozenset[Any]:
        return frozenset(self.decode(item) for item in data["v"])

    def _dict(self, data: dict[str, Any]) -> dict[Any, Any]:
        return {self.decode(key): self.decode(item) for key, item in data["v"]}

    def _enum(self, data: dict[str, Any]) -> enum.Enum:
        member: enum.Enum = find_class(data["c"], enum.Enum)(self.decode(data["v"]))
        return member

    def _path(self, data: dict[str, Any]) -> pathlib.Path:
        return pathlib.Path(data["v"])

    def _pydantic(self, data: dict[str, Any]) -> Any:
        return _adapter(find_class(data["c"])).validate_python(data["v"])

    def _repr(self, data: dict[str, Any]) -> str:  # only in records written before "pydantic"
        return str(data["v"])

    def _pickle(self, data: dict[str, Any]) -> Any:
        if not self._pickles:
            raise EncodingError("refusing to unpickle a value that did not come from our own child")
        return cloudpickle.loads(base64.b64decode(data["v"]))


def _private_defaults(cls: type[BaseModel]) -> dict[str, Any] | None:
    """Private attributes as construction would set them (none were carried)."""
    if not cls.__private_attributes__:
        return None
    defaults = {name: attr.get_default() for name, attr in cls.__private_attributes__.items()}
    return {name: value for name, value in defaults.items() if value is not PydanticUndefined}


def class_name(cls: type) -> str:
    if issubclass(cls, Entity):
        return "entity:" + cls.graftq_type
    return f"{cls.__module__}:{cls.__qualname__}"


def find_class(name: str, base: type = object) -> Any:
    """The class `name` (see `class_name`) among those this process defines.

    One defined in a function is found among the subclasses of `base`, never of `object`.
    """
    if name.startswith("entity:"):
        found: Any = entity_class(name.removeprefix("entity:"))
    else:
        found = _module_attribute(name)
        if found is None and base is not object:
            found = _subclass(name, base)
    if not (isinstance(found, type) and issubclass(found, base)):
        kind = "class" if base is object else base.__name__
        raise EncodingError(f"{name} is not a {kind} this process defines")
    return found


def _module_attribute(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)  # never imported on behalf of data
    if module is None:
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


@cache
def _subclass_index(base: type) -> dict[str, type]:
    index: dict[str, type] = {}
    todo = [base]
    while todo:
        cls = todo.pop()
        index[class_name(cls)] = cls
        todo.extend(cls.__subclasses__())
    return index


def _subclass(name: str, base: type) -> type | None:
    """A class defined in a function (no module attribute names it): search the subclasses."""
    found = _subclass_index(base).get(name)
    if found is None:  # defined since the index was built
        _subclass_index.cache_clear()
        found = _subclass_index(base).get(name)
    return found
