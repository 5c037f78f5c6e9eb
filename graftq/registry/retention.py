"""Retention: `prune` removes old versions nothing needs any more, safely under live commits.

What is kept, per lineage: the newest `keep` versions (commit order, branches
included), the head, and every version younger than `older_than`. What is
kept besides, across lineages, until nothing changes:

* every version in a kept version's tree (sub-entities are shared between versions);
* the Execution record that produced a kept version (its `provenance`);
* the outputs of a kept Execution record, with their trees (what its replay loads).

Everything else goes: the version documents, their history entries, and the
Execution records no kept version derives from. Parent links and the inputs
named by a kept Execution record may then point at removed versions — that is
the history retention removes.

Safety while workers commit. A prune announces itself with ``{p}:prune`` (its
run id, with an expiry). Every commit watches that key and reads it in its one
batched read; while a prune runs, it adds the ids of the versions its tree
reads to ``{p}:prune:{run}:read`` in its MULTI...EXEC. The prune reads the
store only after announcing itself, so a commit is either visible in its
snapshot (it finished before), aborted by the watch (it was in flight when the
key changed), or listed as a reader (it started after). The deletion is one
MULTI...EXEC watching both keys: readers listed at that moment are kept with
everything they need, and a reader arriving later makes the EXEC fail, so the
prune plans again. Removing the key at the end aborts the commits still in
flight, which then read the store as it is after the prune.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from graftq.errors import GraftError
from graftq.registry.execution import Execution
from graftq.registry.index import lineage_batches, stored_types
from graftq.registry.keys import Keys
from graftq.registry.tree import decode_doc

if TYPE_CHECKING:  # redis-py is imported where used: `import graftq` stays light
    import redis

# Atomically: unless a commit listed one of the versions as read during this prune,
# delete them, their history entries and the execution records, and end the prune.
# KEYS: prune key, its reads set, then per version its document and history keys,
# then execution record keys. ARGV: run id, number of versions, the version ids.
# Returns 0 when done, -1 when the prune key is not this run's, else the ids read.
_REMOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
local read = {}
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[2], ARGV[2 + i]) == 1 then read[#read + 1] = ARGV[2 + i] end
end
if #read > 0 then return read end
for i = 1, n do
  redis.call('DEL', KEYS[1 + 2 * i])
  redis.call('LREM', KEYS[2 + 2 * i], 1, ARGV[2 + i])
end
for j = 3 + 2 * n, #KEYS do redis.call('DEL', KEYS[j]) end
redis.call('DEL', KEYS[1], KEYS[2])
return 0
"""

LOCK_SECONDS = 600  # a prune that crashed stops making commits list their reads after this
BATCH = 500
MAX_ATTEMPTS = 16


def _before(now: datetime, age: timedelta) -> datetime:
    """`now - age`; an age reaching before year 1 is the earliest date (nothing is older)."""
    try:
        return now - age
    except OverflowError:
        return datetime.min.replace(tzinfo=now.tzinfo)


def note_reads(keys: Keys, run: str | None, ids: Iterable[str], *, pipeline: Any) -> None:
    """In a commit's MULTI: while prune `run` is going on, list the versions this commit read."""
    if run is None:
        return
    wanted = list(ids)
    if wanted:
        pipeline.sadd(keys.prune_reads(run), *wanted)
        pipeline.expire(keys.prune_reads(run), LOCK_SECONDS)


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed (or, with `dry_run`, would remove)."""

    versions: int
    history_entries: int
    executions: int
    bytes: int
    lineages: int
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {_count(self.versions, 'version')} "
            f"({_count(self.history_entries, 'history entry', 'history entries')}) "
            f"from {_count(self.lineages, 'lineage')} and "
            f"{_count(self.executions, 'execution record')}, {_count(self.bytes, 'byte')}"
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass
class Snapshot:
    """The store as the prune read it: every indexed lineage, its history and documents."""

    heads: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    executions: dict[str, Execution] = field(default_factory=dict)
    execution_sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The versions and Execution records to remove."""

    versions: dict[str, str]  # ecs_id -> lineage_id
    executions: frozenset[str]


class Pruner:
    """One prune run: `start` announces it, `plan` reads and decides, `apply` removes.

    `EntityRegistry.prune` runs all three; the steps are separate so that a
    test can commit between them.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        keep: int,
        older_than: timedelta | None = None,
        now: datetime,
    ) -> None:
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        self._client: Any = client
        self._keys = keys
        self.keep = keep
        self.cutoff = None if older_than is None else _before(now, older_than)
        self.run = uuid.uuid4().hex
        self._started = False  # holds the lock (a dry run never does, and writes nothing)
        self._snapshot = Snapshot()
        self._remove = self._client.register_script(_REMOVE)

    def start(self) -> None:
        """Announce the prune; refused while another one runs."""
        if not self._client.set(self._keys.prune, self.run, nx=True, ex=LOCK_SECONDS):
            other = self._client.get(self._keys.prune)
            raise GraftError(
                f"another prune (run {other}) is in progress on prefix {self._keys.prefix!r}; "
                f"try again when it ends (its lock expires within {LOCK_SECONDS}s)"
            )
        self._started = True

    def finish(self) -> None:
        """Withdraw the announcement if it is still ours (after a failure)."""
        from redis import WatchError

        with self._client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._keys.prune)
                if pipe.get(self._keys.prune) == self.run:
                    pipe.multi()
                    pipe.delete(self._keys.prune, self._keys.prune_reads(self.run))
                    pipe.execute()
            except WatchError:
                pass

    def plan(self, also_needed: Iterable[str] = ()) -> Plan:
        """Read the store and decide; `also_needed` are versions to keep regardless."""
        self._snapshot = self._read()
        return self._decide(set(also_needed))

    def apply(self, planned: Plan) -> Plan:
        """Remove what `planned` names, minus what commits read meanwhile; what was removed."""
        keys = self._keys
        for _ in range(MAX_ATTEMPTS):
            versions = list(planned.versions.items())
            doc_keys = [
                k for i, lineage in versions for k in (keys.version(i), keys.history(lineage))
            ]
            outcome = self._remove(
                keys=[
                    keys.prune,
                    keys.prune_reads(self.run),
                    *doc_keys,
                    *(keys.execution(i) for i in planned.executions),
                ],
                args=[self.run, len(versions), *(i for i, _ in versions)],
            )
            if outcome == 0:
                return planned
            if outcome == -1:
                raise GraftError(
                    f"prune run {self.run} lost its lock (it ran past {LOCK_SECONDS}s); "
                    "nothing was removed"
                )
            read = cast(set[str], self._client.smembers(keys.prune_reads(self.run)))
            planned = self._decide(read)
        raise GraftError(f"prune gave up after {MAX_ATTEMPTS} attempts: commits kept reading")

    def report(self, planned: Plan, *, dry_run: bool) -> PruneReport:
        snap = self._snapshot
        size = sum(snap.sizes[i] + len(i) for i in planned.versions)
        size += sum(snap.execution_sizes[i] for i in planned.executions)
        return PruneReport(
            versions=len(planned.versions),
            history_entries=len(planned.versions),
            executions=len(planned.executions),
            bytes=size,
            lineages=len(set(planned.versions.values())),
            dry_run=dry_run,
        )

    # -- reading -----------------------------------------------------------------

    def _read(self) -> Snapshot:
        snap = Snapshot()
        for lineages in self._lineage_batches():
            with self._client.pipeline(transaction=False) as pipe:
                for lineage in lineages:
                    pipe.get(self._keys.head(lineage))
                    pipe.lrange(self._keys.history(lineage), 0, -1)
                replies = pipe.execute()
            for n, lineage in enumerate(lineages):
                head, history = replies[2 * n], replies[2 * n + 1]
                if head is not None and history:
                    snap.heads[lineage], snap.history[lineage] = head, history
            if self._started:
                self._client.expire(self._keys.prune, LOCK_SECONDS)  # still running
        ids = [ecs_id for history in snap.history.values() for ecs_id in history]
        for chunk, raws in self._mget(self._keys.version, ids):
            for ecs_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    snap.docs[ecs_id] = decode_doc(ecs_id, raw)
                    snap.sizes[ecs_id] = len(raw.encode())
        runs = sorted({d["derived_from"] for d in snap.docs.values() if d["derived_from"]})
        for chunk, raws in self._mget(self._keys.execution, runs):
            for execution_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    snap.executions[execution_id] = Execution.model_validate_json(raw)
                    snap.execution_sizes[execution_id] = len(raw.encode())
        return snap

    def _lineage_batches(self) -> Iterator[list[str]]:
        """Every indexed lineage, once, a batch at a time."""
        seen: set[str] = set()
        for type_name in stored_types(self._client, self._keys):
            for found in lineage_batches(self._client, self._keys, type_name, BATCH):
                fresh = [lineage for lineage in found if lineage not in seen]
                seen.update(fresh)
                if fresh:
                    yield fresh

    def _mget(self, key: Any, ids: list[str]) -> Iterator[tuple[list[str], list[str | None]]]:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            yield chunk, cast(list[str | None], self._client.mget([key(i) for i in chunk]))

    # -- deciding ----------------------------------------------------------------

    def _decide(self, also_needed: set[str]) -> Plan:
        snap = self._snapshot
        candidates: dict[str, str] = {}
        for lineage, history in snap.history.items():
            newest = set(history[len(history) - self.keep :]) if self.keep else set()
            for ecs_id in history:
                doc = snap.docs.get(ecs_id)
                if doc is None or ecs_id in newest or ecs_id == snap.heads[lineage]:
                    continue
                if self.cutoff is None or datetime.fromisoformat(doc["created_at"]) < self.cutoff:
                    candidates[ecs_id] = lineage
        kept = {i for i in snap.docs if i not in candidates} | (also_needed & set(snap.docs))
        runs = self._close(kept)
        victims = {i: lineage for i, lineage in candidates.items() if i not in kept}
        unused = {
            snap.docs[i]["derived_from"]
            for i in victims
            if snap.docs[i]["derived_from"] in snap.executions
        }
        return Plan(victims, frozenset(unused - runs))

    def _close(self, kept: set[str]) -> set[str]:
        """Grow `kept` by everything its versions need; the Execution ids kept."""
        snap = self._snapshot
        runs: set[str] = set()
        todo = list(kept)
        while todo:
            doc = snap.docs.get(todo.pop())
            if doc is None:
                continue
            needed = [kid for _, kid in doc["kids"]]
            run = doc["derived_from"]
            if run and run not in runs:
                runs.add(run)
                execution = snap.executions.get(run)
                needed += execution.outputs if execution else []
            for ecs_id in needed:
                if ecs_id not in kept:
                    kept.add(ecs_id)
                    todo.append(ecs_id)
        return runs
