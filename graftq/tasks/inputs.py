"""Preparing a call's input: store Entity objects, resolve references, validate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import pydantic

from graftq.errors import GraftError, InvalidEntity, line_errors
from graftq.registry import containers, references, tree
from graftq.registry.entity import IDENTITY_FIELDS, Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.store import Announcement, EntityRegistry
from graftq.tasks import bounds, encoding
from graftq.tasks.callables import CallableInfo


@dataclass(frozen=True)
class Prepared:
    """A validated call: its keyword arguments and exactly which versions it reads."""

    info: CallableInfo
    given: dict[str, Any]
    pinned: dict[str, Any]
    kwargs: dict[str, Any]
    read_by_head: Mapping[str, frozenset[str]]  # lineage → versions of it read by head
    failed: Execution | None = None  # a failed run recorded under the execution id asked about

    @property
    def by_lineage(self) -> bool:
        """Whether any input was read by lineage reference (the head at resolution time)."""
        return bool(self.read_by_head)

    def recorded_inputs(self) -> dict[str, Any]:
        """The inputs as the Execution records them: a whole entity by its version id,
        a field by its pinned reference (`@<ecs_id>.path`), a literal as itself (one
        starting with `@` escaped, `@@text`)."""
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
    given = as_input(input_data)
    bounds.check_depth(given)  # before the recursive encoding: too deep is InvalidInput
    try:
        typed = encoding.encode(given)
    except encoding.EncodingError:  # `prepare` refuses it, unless its class is made in a
        typed = repr(given)  # function; either way only `app.execute` gives such input
    canonical = json.dumps([info.name, typed], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def same_job(done: Execution, info: CallableInfo, digest: str | None) -> Execution:
    """`done`, if it is the record of this very job; an id reused by another job is refused.

    `digest` is the job's `input_digest`, None when its input is not known (then only
    the callable is compared); a record without a digest (an older one) is taken on its
    callable alone too.
    """
    if done.callable != info.name:
        raise GraftError(
            f"execution {done.id} is already recorded for callable {done.callable!r}; "
            f"refusing to answer a job of {info.name!r} with its result (reused task id?)"
        )
    if digest is not None and done.input_digest is not None and done.input_digest != digest:
        raise GraftError(
            f"execution {done.id} of {info.name!r} is already recorded with other inputs "
            f"({done.inputs}); refusing to answer this job with its result (reused task id?)"
        )
    return done


def store_entities(store: EntityRegistry, givens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inputs with their Entity objects stored and replaced by pinned references.

    An unstored entity is stored as a first version, a modified one is forked
    (a branch if its head moved): all of them in one transaction.
    """
    found = [leaf for given in givens for _, leaf in containers.leaves(given) if _is_entity(leaf)]
    stored = iter(store.commit(found, branch=True).entities)
    return [
        containers.map_leaves(
            g, lambda leaf: f"@{next(stored).ecs_id}" if _is_entity(leaf) else leaf
        )
        for g in givens
    ]


def _is_entity(value: Any) -> bool:
    return isinstance(value, Entity)


def _has_entities(given: dict[str, Any]) -> bool:
    return any(_is_entity(leaf) for _, leaf in containers.leaves(given))


def _record(pinned: Any) -> Any:
    """A whole entity as its version id; a field reference and a literal starting with
    `@` stay as they are (`@<ecs_id>.path`, `@@text`), so no literal reads as a reference."""

    def change(leaf: Any) -> Any:
        if not (isinstance(leaf, str) and leaf.startswith("@")):
            return leaf
        parsed = references.parse(leaf)
        if isinstance(parsed, references.Reference) and not parsed.path:
            return parsed.uuid
        return leaf

    return containers.map_leaves(pinned, change)


def validate(info: CallableInfo, value: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `value` (the input with its references resolved).

    An entity made from a literal dict may not carry identity fields: a dict is new
    data, and only the store says which version something is — else a client could
    name a stored version and send other content, and the history would show a step
    that was never stored. (Scanned for only when a dict has such a key.)
    """
    kwargs = info.validate_input(value)
    if _claims_identity(value):
        made = {id(n.entity) for root in tree.roots(value) for n in tree.nodes(tree.walk(root))}
        for name, arg in kwargs.items():
            for root in tree.roots(arg):
                for node in tree.nodes(tree.walk(root)):
                    if id(node.entity) not in made:
                        _refuse_identity(name, node.entity)
    return kwargs


def _claims_identity(value: Any) -> bool:
    """Whether a dict in `value` has a key named like an identity field."""
    if isinstance(value, dict):
        return not IDENTITY_FIELDS.isdisjoint(value) or any(map(_claims_identity, value.values()))
    return isinstance(value, list | tuple) and any(map(_claims_identity, value))


def _refuse_identity(parameter: str, entity: Entity) -> None:
    claimed = sorted(IDENTITY_FIELDS & entity.model_fields_set)
    if not claimed:
        return
    named = entity.ecs_id if "ecs_id" in claimed else entity.lineage_id
    raise InvalidEntity(
        f"input {parameter!r}: {type(entity).__name__} data given as a dict sets "
        f"{', '.join(claimed)}, which only the store sets; to pass a stored version write "
        f"'@{named}', for new data leave {'them' if len(claimed) > 1 else 'it'} out"
    )


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
    announce: Announcement | None = None,
) -> Prepared | Done: ...


def prepare(
    store: EntityRegistry,
    info: CallableInfo,
    input_data: Mapping[str, Any],
    *,
    replay_of: str | None = None,
    announce: Announcement | None = None,
) -> Prepared | Done:
    """Resolve and validate; raises before anything runs, is enqueued or is written.

    Entity objects among the values are validated as given first, and only
    then stored, so bad input leaves no trace in the store. With `replay_of`, that
    execution's record is read in the same round trip as the inputs; if it
    succeeded, `Done` comes back and nothing is validated; if it failed, it comes
    back as `Prepared.failed`. An `announce` is told
    in that round trip.
    """
    given = bounds.carried(store, info, as_input(input_data))  # too deep or not JSON: refused
    resolution = references.resolve(store, given, execution_id=replay_of, announce=announce)
    done = resolution.execution
    if done is not None and done.status is ExecutionStatus.SUCCESS:
        return Done(done)
    kwargs = validate(info, resolution.value)
    if _has_entities(given):  # the input is known good: store the objects, read them back
        [given] = store_entities(store, [given])
        resolution = references.resolve(store, given)
        kwargs = validate(info, resolution.value)
    return Prepared(info, given, resolution.pinned, kwargs, resolution.read_by_head, done)


def prepare_many(
    store: EntityRegistry, info: CallableInfo, inputs: Sequence[Mapping[str, Any]]
) -> list[Prepared]:
    """`prepare` for a batch: one read resolves the references of every input.

    Any error names the index of the input it came from; then nothing was written.
    """
    if isinstance(inputs, Mapping | str | bytes) or not isinstance(inputs, Sequence):
        raise TypeError(
            f"inputs must be a list of input dicts (one per job), got {type(inputs).__name__}"
        )
    givens = [
        _at(index, lambda data: bounds.carried(store, info, as_input(data)), data)
        for index, data in enumerate(inputs)
    ]
    resolutions = _resolve_many(store, givens)
    kwargs = [_at(i, lambda v: validate(info, v), r.value) for i, r in enumerate(resolutions)]
    if any(_has_entities(given) for given in givens):  # all entity objects in one transaction
        givens = _store_batch_entities(store, givens)
        resolutions = _resolve_many(store, givens)
        kwargs = [_at(i, lambda v: validate(info, v), r.value) for i, r in enumerate(resolutions)]
    return [
        Prepared(info, given, resolution.pinned, args, resolution.read_by_head)
        for given, resolution, args in zip(givens, resolutions, kwargs, strict=True)
    ]


def _store_batch_entities(
    store: EntityRegistry, givens: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`store_entities` for a batch; an entity object the store refuses (a value assigned
    without validation, an id that is taken) is an error naming the input it came from."""
    try:
        return store_entities(store, givens)
    except (InvalidEntity, pydantic.ValidationError) as exc:
        held: dict[str, set[int]] = {}  # ecs_id → the inputs holding an entity object of it
        for index, given in enumerate(givens):  # which input is it? ask without writing
            roots = [leaf for _, leaf in containers.leaves(given) if _is_entity(leaf)]
            if roots:
                _at(index, lambda found: store.check(found, branch=True), roots)
            for node in (n for root in roots for n in tree.nodes(tree.walk(root))):
                held.setdefault(str(node.entity.ecs_id), set()).add(index)
        # refused only together: two inputs change one version two ways
        named = {i for ecs_id, inputs in held.items() if ecs_id in str(exc) for i in inputs}
        if isinstance(exc, InvalidEntity) and len(named) > 1:
            *first, last = sorted(named)
            raise InvalidEntity(
                f"inputs {', '.join(map(str, first))} and {last} of the batch: {exc} "
                "(a batch stores its entity objects in one transaction; submit them apart, "
                "and each is forked from that version)"
            ) from None
        raise


def _resolve_many(
    store: EntityRegistry, givens: list[dict[str, Any]]
) -> list[references.Resolution]:
    found = [_at(i, references.collect, given) for i, given in enumerate(givens)]
    uuids = [ref.uuid for refs in found for ref in refs]
    snapshot = store.snapshot(uuids) if uuids else None
    return [
        _at(i, lambda pair: references.resolved(pair[0], pair[1], snapshot), (given, refs))
        for i, (given, refs) in enumerate(zip(givens, found, strict=True))
    ]


T = TypeVar("T")


def _at(index: int, step: Callable[[Any], T], value: Any) -> T:
    """`step(value)`; an error names the batch index it came from."""
    try:
        return step(value)
    except pydantic.ValidationError as exc:
        title = f"input {index} of the batch: {exc.title}"
        raise validation_error(title, exc.errors(include_url=False)) from None
    except (GraftError, TypeError) as exc:
        try:
            again = type(exc)(f"input {index} of the batch: {exc}")
        except Exception:  # an exception type with another signature keeps its own message
            exc.add_note(f"in input {index} of the batch")
            raise
        raise again from None


def validation_error(title: str, errors: Sequence[Mapping[str, Any]]) -> pydantic.ValidationError:
    """Pydantic's ValidationError rebuilt from its `errors()` under another title."""
    return pydantic.ValidationError.from_exception_data(title, line_errors(errors))
