"""The commit: one optimistic WATCH/MULTI/EXEC transaction per attempt.

One attempt is three round trips: WATCH the lineage heads (and the execution
key); read the heads and the stored documents of the tree in one MGET; plan
the new versions, check every head against the version it was read as, then
write versions, history entries, the type index, head moves and the execution
record in one MULTI...EXEC (and, while a prune runs, what this commit read:
see `retention`). A WatchError means somebody wrote in between: the caller
re-plans, a bounded number of times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import redis

from graftq.errors import InvalidEntity, VersionConflict
from graftq.registry import diff, index, retention
from graftq.registry.diff import Plan, Version
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.keys import Keys
from graftq.registry.tree import Node, decode_doc, nodes


class Writer(Protocol):
    """What write helpers need: a redis client, a pipeline, or the overlay's pipeline."""

    def set(self, name: str, value: str) -> Any: ...
    def rpush(self, name: str, *values: str) -> Any: ...


@dataclass(frozen=True)
class Request:
    """One commit: the trees to store and what to record with them."""

    trees: list[Node]
    branch: bool = False
    derived_from: str | None = None
    execution: Execution | None = None
    memo_key: str | None = None
    lineages: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Outcome:
    """What an attempt did."""

    plan: Plan
    branched: bool = False
    replayed: Execution | None = None


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


def attempt(client: Any, keys: Keys, request: Request) -> Outcome | Retry:
    """One try at committing; `client` is a redis.Redis or an overlay with its methods."""
    ids = list(dict.fromkeys(str(n.entity.ecs_id) for t in request.trees for n in nodes(t)))
    guessed = request.lineages | {str(n.entity.lineage_id) for t in request.trees for n in nodes(t)}
    lineages = sorted(guessed)
    watched = [keys.head(lineage) for lineage in lineages]
    if request.execution is not None:
        watched.append(keys.execution(request.execution.id))
    watched.append(keys.prune)  # a prune that starts or ends now re-runs this attempt
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(*watched)
            values = cast(list[Any], pipe.mget([*watched, *(keys.version(i) for i in ids)]))
            heads = dict(zip(lineages, values, strict=False))
            if request.execution is not None and (done := _success(values[len(lineages)])):
                return Outcome(Plan(), replayed=done)
            stored = {
                i: decode_doc(i, raw)
                for i, raw in zip(ids, values[len(watched) :], strict=True)
                if raw
            }
            plan = diff.plan(
                request.trees,
                stored,
                now=datetime.now(UTC),
                derived_from=request.derived_from,
            )
            if not guessed.issuperset(plan.expect):
                return Retry(guessed | set(plan.expect))
            if not plan.new and request.execution is None:
                return Outcome(plan)
            moved = check_heads(plan, heads)
            if moved is None:
                return Retry(guessed)
            if moved and not request.branch:
                raise VersionConflict(conflict_message(moved))
            pipe.multi()
            _write(client, keys, request, plan, branched=bool(moved), pipe=pipe)
            retention.note_reads(keys, values[len(watched) - 1], ids, pipeline=pipe)
            pipe.execute()
        except redis.WatchError:
            return Retry(guessed)
    return Outcome(plan, branched=bool(moved))


def _write(
    client: Any, keys: Keys, request: Request, plan: Plan, *, branched: bool, pipe: Any
) -> None:
    for version in plan.new:
        write_version(client, keys, version, pipeline=pipe)
        index.add(keys, version, plan.docs.get(version.parent_id or ""), pipeline=pipe)
        if not branched or version.parent_id is None:  # a new lineage has no rival head
            move_head(client, keys, version.lineage_id, version.ecs_id, pipeline=pipe)
    if request.execution is not None:
        recorded = request.execution.model_copy(
            update={"branched": branched, "outputs": list(plan.roots)}
        )
        write_execution(client, keys, recorded, memo_key=request.memo_key, pipeline=pipe)


def check_heads(
    plan: Plan, heads: dict[str, str | None]
) -> dict[str, tuple[str | None, str | None]] | None:
    """Lineages whose head is not the version the plan read: lineage → (read as, now).

    None when a new lineage was just stored concurrently from the same object
    (plan again: it is now known); `InvalidEntity` when an unstored entity
    names a lineage that already exists.
    """
    moved: dict[str, tuple[str | None, str | None]] = {}
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


def conflict_message(moved: dict[str, tuple[str | None, str | None]]) -> str:
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
