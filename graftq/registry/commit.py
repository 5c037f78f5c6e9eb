"""The commit: one optimistic WATCH/MULTI/EXEC transaction per attempt.

One attempt is two round trips: WATCH the keys the decision rests on and read them
in one MGET sent with it (lineage heads, the stored documents of the tree, the
execution key, and the keys that tell whether a new id is already taken); then plan the new
versions, validate every document, check identities and heads, and write versions,
history entries, head moves, the type index and the execution record in one
MULTI...EXEC (and, while a prune runs, what the tree read: see `retention`). A
WatchError means somebody wrote in between: the caller re-plans, a bounded number
of times. A WatchError can also hide a dropped connection after EXEC was sent
(redis-py reports both alike), so before re-planning the attempt reads back one
key it wrote: if that holds exactly what this attempt wrote, the commit landed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from graftq.errors import InvalidEntity, VersionConflict
from graftq.registry import diff, index, retention
from graftq.registry.diff import Plan, Version
from graftq.registry.entity import Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.keys import Keys
from graftq.registry.tree import Node, build, decode_doc, nodes

Moved = dict[str, tuple[str | None, str | None]]
# Further Redis commands to run in the MULTI that records this execution (given the
# record as written), e.g. a result backend's copy of the outcome.
Also = Callable[[Execution], Sequence[tuple[Any, ...]]]


class Writer(Protocol):
    """What write helpers need: a redis client, a pipeline, or the overlay's pipeline."""

    def set(self, name: str, value: str) -> Any: ...
    def rpush(self, name: str, *values: str) -> Any: ...


@dataclass(frozen=True)
class Request:
    """One commit: the trees to store and what to record with them.

    A moved head is a `VersionConflict` unless `branch` is set and the head is one
    `strict` gives for its lineage, if any (lineage → the versions of it an execution
    read by lineage reference: a head that moved since is a conflict, one that did not
    leaves what derives from an older version a branch); then the new version is
    stored as a branch and that head stays. `also` adds commands to the transaction
    that writes the execution record.
    """

    trees: list[Node]
    branch: bool = False
    strict: Mapping[str, frozenset[str]] = field(default_factory=dict)
    derived_from: str | None = None
    execution: Execution | None = None
    memo_key: str | None = None
    lineages: frozenset[str] = field(default_factory=frozenset)
    also: Also | None = None


@dataclass(frozen=True)
class Outcome:
    """What an attempt did: the stored trees, or the execution that already did it."""

    plan: Plan
    entities: list[Entity] = field(default_factory=list)
    execution: Execution | None = None
    branched: bool = False
    replayed: bool = False


@dataclass(frozen=True)
class Retry:
    """Attempt again, watching at least these lineages."""

    lineages: frozenset[str]


def write_version(
    client: Writer, keys: Keys, version: Version, *, pipeline: Writer | None = None
) -> None:
    target = pipeline if pipeline is not None else client
    target.set(keys.version(version.ecs_id), version.raw)
    target.rpush(keys.history(version.lineage_id), version.ecs_id)


def move_head(
    client: Writer, keys: Keys, lineage_id: str, ecs_id: str, *, pipeline: Writer | None = None
) -> None:
    target = pipeline if pipeline is not None else client
    target.set(keys.head(lineage_id), ecs_id)


def write_execution(
    client: Writer,
    keys: Keys,
    execution: Execution,
    *,
    memo_key: str | None = None,
    pipeline: Writer | None = None,
) -> None:
    target = pipeline if pipeline is not None else client
    target.set(keys.execution(execution.id), execution.model_dump_json())
    if memo_key is not None and execution.status is ExecutionStatus.SUCCESS:
        target.set(memo_key, execution.id)


@dataclass(frozen=True)
class _Reads:
    """The keys one attempt watches and reads, and how to take the MGET answer apart."""

    ids: list[str]
    lineages: list[str]
    execution_key: str | None

    @classmethod
    def of(cls, keys: Keys, request: Request) -> _Reads:
        every = [n.entity for tree in request.trees for n in nodes(tree)]
        lineages = request.lineages | {str(entity.lineage_id) for entity in every}
        execution = request.execution
        return cls(
            ids=list(dict.fromkeys(str(entity.ecs_id) for entity in every)),
            lineages=sorted(lineages),
            execution_key=None if execution is None else keys.execution(execution.id),
        )

    def watched(self, keys: Keys) -> list[str]:
        """Heads, the keys whose existence would make an id ambiguous, the execution, the
        prune in progress."""
        found = [keys.head(lineage) for lineage in self.lineages]
        found += [keys.head(i) for i in self.ids] + [keys.version(x) for x in self.lineages]
        found += [self.execution_key] if self.execution_key else []
        return [*found, keys.prune]  # a prune that starts or ends now re-runs this attempt

    def read(self, keys: Keys, watched: list[str]) -> list[str]:
        return [*watched, *(keys.version(i) for i in self.ids)]


@dataclass(frozen=True)
class _State:
    heads: dict[str, str | None]
    taken_as_lineage: set[str]  # ecs_ids that are lineage ids
    taken_as_version: set[str]  # lineage ids that are version ids
    execution: Any
    pruning: str | None  # the run id of a prune in progress
    stored: dict[str, dict[str, Any]]

    @classmethod
    def parse(cls, reads: _Reads, values: list[Any]) -> _State:
        lineages, ids = reads.lineages, reads.ids
        at = iter(values)
        heads = {lineage: next(at) for lineage in lineages}
        taken_as_lineage = {i for i in ids if next(at) is not None}
        taken_as_version = {lineage for lineage in lineages if next(at) is not None}
        execution = next(at) if reads.execution_key else None
        pruning = next(at)
        stored = {i: decode_doc(i, raw) for i, raw in zip(ids, at, strict=True) if raw}
        return cls(heads, taken_as_lineage, taken_as_version, execution, pruning, stored)


def attempt(client: Any, keys: Keys, request: Request) -> Outcome | Retry:
    """One try at committing; `client` is a redis.Redis or an overlay with its methods."""
    from redis import WatchError  # here, not at the top: `import graftq` stays light

    reads = _Reads.of(keys, request)
    with client.pipeline(transaction=True) as pipe:
        try:
            watched = reads.watched(keys)
            state = _State.parse(reads, _watch_and_read(pipe, watched, reads.read(keys, watched)))
            if (done := _success(state.execution)) is not None:
                return Outcome(Plan(), execution=done, branched=done.branched, replayed=True)
            plan = diff.plan(
                request.trees,
                state.stored,
                now=datetime.now(UTC),
                derived_from=request.derived_from,
            )
            if not set(reads.lineages).issuperset(plan.expect):
                return Retry(frozenset(reads.lineages) | set(plan.expect))
            moved = check_heads(plan, state.heads)
            if moved is None:
                return Retry(frozenset(reads.lineages))
            _check_identities(plan, state)
            _check_conflicts(request, moved)
            fresh = {version.ecs_id for version in plan.new}
            entities = [build(root, plan.docs, fresh) for root in plan.roots]  # validates all
            if not plan.new and request.execution is None:
                return Outcome(plan, entities)
            recorded = _recorded(request, plan, bool(moved))
            pipe.multi()
            _write(client, keys, request, plan, moved, recorded, pipe=pipe)
            retention.note_reads(keys, state.pruning, reads.ids, pipeline=pipe)
        except WatchError:
            return Retry(frozenset(reads.lineages))
        outcome = Outcome(plan, entities, recorded, branched=bool(moved))
        try:
            pipe.execute()
        except WatchError:
            if _landed(client, keys, plan, recorded):
                return outcome
            return Retry(frozenset(reads.lineages))
    return outcome


def _watch_and_read(pipe: Any, watched: list[str], keys: list[str]) -> list[Any]:
    """WATCH `watched` and MGET `keys`: in one round trip where the pipeline can batch
    them (the store's own client: `graftq.worker.connections`), else in two."""
    batched = getattr(pipe, "watch_and_read", None)
    if batched is not None:
        return cast(list[Any], batched(watched, keys))
    pipe.watch(*watched)
    return cast(list[Any], pipe.mget(keys))


def _recorded(request: Request, plan: Plan, branched: bool) -> Execution | None:
    if request.execution is None:
        return None
    return request.execution.model_copy(update={"branched": branched, "outputs": list(plan.roots)})


def _write(
    client: Any,
    keys: Keys,
    request: Request,
    plan: Plan,
    moved: Moved,
    recorded: Execution | None,
    *,
    pipe: Any,
) -> None:
    for version in plan.new:
        write_version(client, keys, version, pipeline=pipe)
        index.add(keys, version, plan.docs.get(version.parent_id or ""), pipeline=pipe)
        if version.lineage_id not in moved:  # a moved head stays: this version is a branch
            move_head(client, keys, version.lineage_id, version.ecs_id, pipeline=pipe)
    if recorded is not None:
        write_execution(client, keys, recorded, memo_key=request.memo_key, pipeline=pipe)
        for command in request.also(recorded) if request.also is not None else ():
            pipe.execute_command(*command)


def _landed(client: Any, keys: Keys, plan: Plan, recorded: Execution | None) -> bool:
    """Whether this attempt's MULTI...EXEC ran although its reply was lost.

    One key it wrote is read back: a new version document (its id is fresh, or the
    document carries this attempt's own timestamp), else the execution record.
    """
    if plan.new:
        key, value = keys.version(plan.new[0].ecs_id), plan.new[0].raw
    elif recorded is not None:
        key, value = keys.execution(recorded.id), recorded.model_dump_json()
    else:  # pragma: no cover - an attempt with nothing to write never reaches EXEC
        return False
    return bool(client.get(key) == value)


def check_heads(plan: Plan, heads: dict[str, str | None]) -> Moved | None:
    """Lineages whose head is not the version the plan read: lineage → (read as, now).

    None when a new lineage was just stored concurrently from the same object
    (plan again: it is now known); `InvalidEntity` when an unstored entity
    names a lineage that already exists.
    """
    moved: Moved = {}
    new_ids = {version.lineage_id: version.ecs_id for version in plan.new}
    for lineage, expected in plan.expect.items():
        actual = heads.get(lineage)
        if actual == expected:
            continue
        if expected is None:
            if actual == new_ids[lineage]:
                return None
            raise InvalidEntity(
                f"entity {new_ids[lineage]} is not stored (never, or removed by a prune) but "
                f"its lineage_id {lineage} exists (head {actual}); do not copy identity fields "
                "by hand, and read a version again after a prune"
            )
        moved[lineage] = (expected, actual)
    return moved


def _check_identities(plan: Plan, state: _State) -> None:
    """A uuid in a reference means one thing: no new id may be taken by the other kind."""
    first = [version for version in plan.new if version.parent_id is None]
    new_lineages = {version.lineage_id for version in first}
    for version in first:
        if version.ecs_id in state.taken_as_lineage or version.ecs_id in new_lineages:
            raise InvalidEntity(
                f"entity {version.ecs_id} cannot be stored: its ecs_id is already a lineage_id "
                "(a reference to it would mean that lineage's head); give it a fresh ecs_id"
            )
        if version.lineage_id in state.taken_as_version:
            raise InvalidEntity(
                f"entity {version.ecs_id} cannot be stored: its lineage_id {version.lineage_id} "
                "is already an ecs_id (a reference to it would mean that version); "
                "give it a fresh lineage_id"
            )


def _check_conflicts(request: Request, moved: Moved) -> None:
    conflicts = {
        lineage: (expected, actual)
        for lineage, (expected, actual) in moved.items()
        if not request.branch or actual not in request.strict.get(lineage, {actual})
    }
    if conflicts:
        raise VersionConflict(conflict_message(conflicts))


def conflict_message(moved: Moved) -> str:
    parts = [
        f"lineage {lineage} was read at version {expected} but its head is now {actual}"
        for lineage, (expected, actual) in moved.items()
    ]
    return "; ".join(parts)


def _success(raw: Any) -> Execution | None:
    if raw is None:
        return None
    recorded = Execution.model_validate_json(raw)
    return recorded if recorded.status is ExecutionStatus.SUCCESS else None
