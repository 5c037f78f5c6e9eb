"""`"@<uuid>.path"` references: parsing, and resolving them against the store.

Grammar: ``@`` + a UUID, then ``.segment`` steps through model fields, dict
keys and integer list/tuple indices. A version id (ecs_id) pins the reference;
a lineage id means the head at resolution time. ``@@text`` is the literal
``@text``. A segment starting with ``_`` is refused.

All references in one input are resolved in one round trip (the store's
snapshot read: what each uuid means, and every tree below).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from graftq.errors import EntityNotFound, InvalidReference
from graftq.registry import containers
from graftq.registry.entity import IDENTITY_FIELDS, Entity
from graftq.registry.execution import Execution
from graftq.registry.tree import nodes, walk

if TYPE_CHECKING:  # the store imports this module
    from graftq.registry.store import Announcement


class Snapshot(Protocol):
    """What one read of the store gives back (`store.Snapshot`)."""

    @property
    def meaning(self) -> dict[str, tuple[str, bool]]: ...
    @property
    def execution(self) -> Execution | None: ...
    def build(self, ecs_id: str) -> Entity: ...


class Reader(Protocol):
    """What resolving needs from the store (`EntityRegistry` has it)."""

    def snapshot(
        self,
        uuids: Iterable[str],
        *,
        execution_id: str | None = None,
        announce: Announcement | None = None,
    ) -> Snapshot: ...


_REFERENCE = re.compile(
    r"@(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"(?P<path>(?:\.[^.]+)*)"
)


@dataclass(frozen=True)
class Reference:
    """A parsed reference: which uuid, then which path inside it."""

    text: str
    uuid: str
    path: tuple[str, ...]

    def pinned(self, ecs_id: str) -> str:
        """The same reference pinned to one version."""
        return "@" + ".".join((ecs_id, *self.path))


@dataclass(frozen=True)
class Resolved:
    """One resolved reference: the version it read and how it was given."""

    reference: Reference
    ecs_id: str
    by_lineage: bool

    @property
    def pinned_text(self) -> str:
        return self.reference.pinned(self.ecs_id)


@dataclass(frozen=True)
class Resolution:
    """An input with its references replaced.

    `value` holds the resolved values (entities as fresh copies); `pinned`
    holds the same structure with each reference rewritten to its pinned form;
    `read_by_head` maps every lineage in the trees that lineage references read to the
    versions of it read there;
    `execution` is the record asked for with `resolve(..., execution_id=...)`.
    """

    value: Any
    pinned: Any
    references: tuple[Resolved, ...]
    read_by_head: Mapping[str, frozenset[str]] = field(default_factory=dict)
    execution: Execution | None = None

    @property
    def by_lineage(self) -> bool:
        return any(ref.by_lineage for ref in self.references)


def parse(text: str) -> Reference | str:
    """A `Reference`, or the literal string (`@@x` → `@x`; no `@` → unchanged)."""
    if not text.startswith("@"):
        return text
    if text.startswith("@@"):
        return text[1:]
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise InvalidReference(_malformed(text))
    path = tuple(match["path"].split(".")[1:])
    for segment in path:
        if segment.startswith("_"):
            raise InvalidReference(
                f"reference {_shown(text)}: segment {_shown(segment)} is private; "
                "segments may not start with '_'"
            )
    return Reference(text, match["uuid"].lower(), path)


def _malformed(text: str) -> str:
    head = text[1:].split(".", 1)[0]
    if not _REFERENCE.fullmatch("@" + head):
        return (
            f"reference {_shown(text)}: {_shown(head)} is not a UUID; expected '@<uuid>' or "
            "'@<uuid>.field.0.key' (write '@@...' for a literal string starting with '@')"
        )
    return f"reference {_shown(text)}: empty path segment; expected '@<uuid>.field.0.key'"


def resolve(
    store: Reader,
    data: Any,
    *,
    execution_id: str | None = None,
    announce: Announcement | None = None,
) -> Resolution:
    """Resolve every reference in `data` (any depth of dicts and lists) in one read.

    With an `execution_id`, that execution's record is read in the same round trip
    (`Resolution.execution`); an `announce` (`store.Announcement`) is told in it. For
    several inputs with one read: `collect` each, one `store.snapshot` of all their
    uuids, then `resolved` each.
    """
    found = collect(data)
    snapshot = None
    if found or execution_id is not None or announce is not None:
        uuids = (ref.uuid for ref in found)
        snapshot = store.snapshot(uuids, execution_id=execution_id, announce=announce)
    return resolved(data, found, snapshot)


def collect(data: Any) -> list[Reference]:
    """The references in `data`, in document order; a malformed one → InvalidReference."""
    found: list[Reference] = []
    _map(data, found.append)
    return found


def resolved(data: Any, found: list[Reference], snapshot: Snapshot | None) -> Resolution:
    """`data` with its references `found` resolved from `snapshot`."""
    execution = None if snapshot is None else snapshot.execution
    if not found:
        return Resolution(
            _map(data, _keep), _map(data, _keep, escaped=True), (), execution=execution
        )
    assert snapshot is not None
    versions = snapshot.meaning
    for ref in found:
        if ref.uuid not in versions:
            raise EntityNotFound(
                f"reference {_shown(ref.text)}: no entity version or lineage {ref.uuid} "
                "in the store"
            )
    roots = [snapshot.build(versions[ref.uuid][0]) for ref in found]  # one copy per use
    resolved = [
        Resolved(ref, versions[ref.uuid][0], by_lineage=not versions[ref.uuid][1]) for ref in found
    ]
    values = iter([navigate(root, ref) for root, ref in zip(roots, found, strict=True)])
    pinned = iter([r.pinned_text for r in resolved])
    by_head: dict[str, frozenset[str]] = {}
    for root, read in zip(roots, resolved, strict=True):
        if read.by_lineage:
            for node in nodes(walk(root)):
                lineage = str(node.entity.lineage_id)
                by_head[lineage] = by_head.get(lineage, frozenset()) | {str(node.entity.ecs_id)}
    return Resolution(
        _map(data, lambda _: next(values)),
        _map(data, lambda _: next(pinned), escaped=True),
        tuple(resolved),
        by_head,
        execution,
    )


def _keep(ref: Reference) -> str:
    return ref.text


def _map(data: Any, on_reference: Callable[[Reference], Any], *, escaped: bool = False) -> Any:
    """`data` with each reference replaced, in document order.

    `@@` literals are unescaped unless `escaped` (the pinned form stays parseable).
    """

    def change(leaf: Any) -> Any:
        if not isinstance(leaf, str):
            return leaf
        parsed = parse(leaf)
        if isinstance(parsed, Reference):
            return on_reference(parsed)
        return leaf if escaped else parsed

    return containers.map_leaves(data, change)


def navigate(root: Any, ref: Reference) -> Any:
    """Follow the reference's path from `root`; a bad step names what exists there."""
    value = root
    for depth, segment in enumerate(ref.path):
        where = "@" + ".".join((ref.uuid, *ref.path[:depth]))
        value = _step(value, segment, f"reference {_shown(ref.text)}: at {_shown(where)}")
    return value


def _step(value: Any, segment: str, context: str) -> Any:
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}  # extra="allow": fields of this instance
        if segment in type(value).model_fields or segment in extra:
            return getattr(value, segment)
        raise InvalidReference(
            f"{context}: {type(value).__name__} has no field {_shown(segment)}; "
            f"fields: {_fields_shown(value, extra)}"
        )
    if isinstance(value, dict):
        if segment not in value:
            keys = ", ".join(_key_shown(key) for key in itertools.islice(value, _KEYS_SHOWN))
            more = f" and {len(value) - _KEYS_SHOWN} more" if len(value) > _KEYS_SHOWN else ""
            shown = keys + more if value else "(empty dict)"
            if any(not isinstance(key, str) for key in value):
                shown += "; a reference reaches only str keys"
            raise InvalidReference(f"{context}: no key {_shown(segment)}; keys: {shown}")
        return value[segment]
    if isinstance(value, list | tuple):
        digits = segment.isascii() and segment.isdigit() and len(segment) < 19  # "²".isdigit()
        digits = digits and (segment == "0" or not segment.startswith("0"))  # one spelling
        if not digits or int(segment) >= len(value):
            valid = f"valid: 0..{len(value) - 1}" if value else "it is empty"
            raise InvalidReference(
                f"{context}: {_shown(segment)} is not an index of this {type(value).__name__} "
                f"of length {len(value)} ({valid})"
            )
        return value[int(segment)]
    raise InvalidReference(
        f"{context}: cannot look up {_shown(segment)} in a {type(value).__name__} value"
    )


_SHOWN = 80  # characters of a reference or segment a message quotes
_KEYS_SHOWN = 20  # dict keys a message lists


def _fields_shown(model: BaseModel, extra: dict[str, Any]) -> str:
    """The model's own fields, its first extra ones, then the identity fields."""
    names = type(model).model_fields
    shown = [name for name in names if name not in IDENTITY_FIELDS]
    shown += [name[:_SHOWN] for name in itertools.islice(extra, _KEYS_SHOWN)]
    if len(extra) > _KEYS_SHOWN:
        shown.append(f"{len(extra) - _KEYS_SHOWN} more extra fields")
    return ", ".join([*shown, *(name for name in names if name in IDENTITY_FIELDS)])


def _key_shown(key: object) -> str:
    """A dict key for a message: a str quoted, any other with its type (int 1 is not '1')."""
    if isinstance(key, str):
        return _shown(key)
    return f"{str(key)[:_SHOWN]} ({type(key).__name__})"


def _shown(text: str) -> str:
    """`text` quoted for a message; a long one cut, its length said (a message goes into
    the Execution record and Celery's result: a megabyte of input must not double there)."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text):,} characters)"
