"""Input bounds: how deep an input may nest, and which values its JSON can carry.

A job's input travels as JSON (the broker's, or the Execution record's for
`app.execute`), so `carried` refuses, with `InvalidInput` and before anything
is stored, enqueued or run:

* nesting deeper than `MAX_DEPTH` containers (dicts, lists, tuples, sets,
  models) inside one parameter — counted without recursion, so a hostile input
  cannot make the check itself overflow the stack;
* a value with no JSON form (`object()`, non-UTF-8 `bytes`, a str with a lone
  surrogate, NaN or infinity, a dict key that is not a str or int);
* a dict whose keys are exactly ``__type__`` and ``__value__``: kombu's JSON
  reserves that shape for the types it smuggles through, so it would arrive as
  something else;
* a value whose JSON form validates, against its parameter, to something other
  than the value itself validates to (a `set` or `bytes` in an `Any` parameter
  comes back a list or a str). A `datetime` for a `datetime` parameter, a set
  for a `set[int]` parameter, an `Enum` member for its Enum parameter round-trip
  and pass.

The callable then always gets the JSON form validated, in `app.execute` as on a
worker. Entity objects are kept as they are: they are stored and replaced by
references — those inside a plain model too. A plain model's JSON form is built field
by field, each under the key its class validates (a validation alias, or the name),
unless the class defines its own form with a model serializer. The same depth bound
guards a worker before it hands a message to its pool (`graftq.worker.guard`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pydantic
import pydantic_core
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from graftq.errors import InvalidInput
from graftq.registry import containers, references, tree
from graftq.registry.entity import Entity

if TYPE_CHECKING:
    from graftq.registry.store import EntityRegistry
    from graftq.tasks.callables import CallableInfo

__all__ = ["ENVELOPE", "MAX_DEPTH", "carried", "check_depth", "depth_exceeds"]

MAX_DEPTH = 64
ENVELOPE = frozenset({"__type__", "__value__"})  # kombu's JSON marks its own types so
_PLAIN = frozenset({str, int, float, bool, type(None)})  # exact: an IntEnum arrives as an int
_CONTAINERS = (dict, list, tuple, set, frozenset, BaseModel)


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        yield from value
    elif isinstance(value, BaseModel):
        yield from value.__dict__.values()
        yield from (value.__pydantic_extra__ or {}).values()


def depth_exceeds(value: Any, limit: int) -> bool:
    """True if `value` nests more than `limit` containers (iterative; cycles count as deep)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _CONTAINERS):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in _children(item))
    return False


def check_depth(input_data: Mapping[str, Any], limit: int = MAX_DEPTH) -> None:
    """`InvalidInput` naming the first parameter whose value nests deeper than `limit`."""
    for name, value in input_data.items():
        if depth_exceeds(value, limit):
            raise InvalidInput(
                f"parameter {name!r}: nested deeper than {limit} containers; "
                "graftq refuses deeper input so no worker can be overflowed"
            )


def carried(
    store: EntityRegistry, info: CallableInfo, input_data: Mapping[str, Any]
) -> dict[str, Any]:
    """The input as JSON carries it (Entity objects kept); `InvalidInput` if it cannot be.

    Raises `pydantic.ValidationError` if the value as given does not validate.
    """
    check_depth(input_data)
    for name in input_data:
        if not isinstance(name, str):
            raise InvalidInput(f"input key {name!r:.80} is not a parameter name (a str)")
    changed: list[str] = []
    form = {name: _json_form(value, name, changed) for name, value in input_data.items()}
    if changed:
        _check_round_trip(store, info, input_data, form, sorted(set(changed)))
    return form


def _json_form(value: Any, where: str, changed: list[str], literal: bool = False) -> Any:
    """`value` as JSON data; `changed` gets `where` if that differs from the value.

    References are strs the caller wrote in the input's dicts and lists (SPEC 4). A str
    inside any other value (a model's field, a dataclass) is `literal`: its JSON form
    escapes a leading "@", so it arrives as that str, never read as a reference.
    """
    if isinstance(value, Entity):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"parameter {where!r}: {value} has no JSON form")
    if type(value) is str and not value.isascii():  # isascii is O(1): ASCII is UTF-8
        _check_utf8(value, where)
    if type(value) in _PLAIN:
        return _literal(value, where) if literal else value
    if type(value) not in (dict, list):
        changed.append(where)  # a tuple arrives a list, a subclass (IntEnum, ...) its base
    if isinstance(value, dict):
        if value.keys() == ENVELOPE:
            raise InvalidInput(
                f"parameter {where!r}: a dict with exactly the keys __type__ and __value__ "
                "is reserved by the broker's JSON (it would arrive decoded as another type)"
            )
        return {
            _key(k, where, changed): _json_form(v, where, changed, literal)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_json_form(item, where, changed, literal) for item in value]
    if isinstance(value, BaseModel) and (_custom_form(value) is None or _holds_entity(value)):
        return _model_form(value, where, changed)
    try:
        form = pydantic_core.to_jsonable_python(value)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"parameter {where!r}: a {type(value).__name__} value has no JSON form ({exc}); "
            "a job's input must travel as JSON"
        ) from None
    return containers.map_leaves(form, lambda leaf: _literal(leaf, where))


def _literal(leaf: Any, where: str) -> Any:
    """A str as a literal in the input: one starting with "@" escaped as "@@" (and, being
    dumped by pydantic rather than walked by `_json_form`, checked for UTF-8 here)."""
    if type(leaf) is not str:
        return leaf
    if not leaf.isascii():
        _check_utf8(leaf, where)
    return "@" + leaf if leaf.startswith("@") else leaf


def _model_form(model: BaseModel, where: str, changed: list[str]) -> dict[str, Any]:
    """A plain model as the dict its class validates: each field under the key validation
    takes (pydantic's dump may use another: the name, or a serialization alias).

    A field holding models is built here, so entities in it are kept; any other is
    dumped by pydantic, its own serializers applied.
    """
    form: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        item = getattr(model, name)
        key = _validation_key(model, name, field)
        if any(isinstance(leaf, BaseModel) for _, leaf in containers.leaves(item)):
            form[key] = _json_form(item, where, changed, literal=True)
            continue
        try:
            dumped = pydantic_core.to_jsonable_python(model, include={name}, by_alias=False)
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"parameter {where!r}: field {name!r} of a {type(model).__name__} has no JSON "
                f"form ({exc}); a job's input must travel as JSON"
            ) from None
        if name in dumped:  # not left out by Field(exclude=True)
            form[key] = containers.map_leaves(dumped[name], lambda leaf: _literal(leaf, where))
    extra = model.__pydantic_extra__ or {}
    return form | {
        key: _json_form(item, where, changed, literal=True) for key, item in extra.items()
    }


def _custom_form(model: BaseModel) -> Any:
    """The model serializer `model`'s class defines, if any: its form is the author's."""
    return next(iter(type(model).__pydantic_decorators__.model_serializers.values()), None)


def _holds_entity(model: BaseModel) -> bool:
    return next(tree.roots(model), None) is not None


def _validation_key(model: BaseModel, name: str, field: FieldInfo) -> str:
    """The key under which `model`'s class validates field `name`: its validation alias
    (the first plain one of an AliasChoices), unless the class validates by name only."""
    alias: Any = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((choice for choice in alias.choices if isinstance(choice, str)), None)
    if isinstance(alias, str) and model.model_config.get("validate_by_alias", True):
        return alias
    return name


def _check_utf8(text: str, where: str) -> None:
    """A str with a lone surrogate (from ``surrogateescape``, or JSON's ``"\\ud800"``) has
    no UTF-8 form: neither the Execution record nor a stored version could hold it."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"parameter {where!r}: the str {text!r:.80} holds the lone surrogate "
            f"{text[exc.start]!r} at index {exc.start}, which has no UTF-8 form"
        ) from None


def _key(key: Any, where: str, changed: list[str]) -> str:
    if isinstance(key, str):
        if not key.isascii():
            _check_utf8(key, where)
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        changed.append(where)
        return str(key)
    raise InvalidInput(
        f"parameter {where!r}: dict key {key!r:.80} is a {type(key).__name__}; "
        "JSON object keys are strings (ints are carried as their digits)"
    )


def _check_round_trip(
    store: EntityRegistry,
    info: CallableInfo,
    given: Mapping[str, Any],
    form: dict[str, Any],
    names: list[str],
) -> None:
    """Refuse parameters whose JSON form validates to something else than the value does.

    Both forms are resolved in one go, so they see the same stored versions.
    """
    both = references.resolve(store, {"given": dict(given), "form": form}).value
    expected = info.validate_input(both["given"])  # the value as given must be valid itself
    try:
        arrives = info.validate_input(both["form"])
    except pydantic.ValidationError as exc:
        failing = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
        raise InvalidInput(_lost(failing or names, given, "does not validate")) from None
    for name in names:
        found = containers.difference(expected.get(name), arrives.get(name), (name,))
        if found is not None:
            path, was, now = found
            kinds = f"{type(was).__name__} arrives as {type(now).__name__}"
            if type(was) is type(now):
                kinds = f"{was!r:.60} arrives as {now!r:.60}"
            raise InvalidInput(_lost([name], given, f"at {containers.dotted(path)}: {kinds}"))


def _lost(names: list[str], given: Mapping[str, Any], what: str) -> str:
    shown = ", ".join(f"{name!r} ({type(given.get(name)).__name__})" for name in names)
    return (
        f"parameter {shown}: the value does not survive the broker's JSON — its JSON form "
        f"{what}; pass JSON types (dict, list, str, int, float, bool, None) or annotate "
        "the parameter with the type you pass (e.g. set[int], datetime)"
    )
