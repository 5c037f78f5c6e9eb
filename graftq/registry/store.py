"""`EntityRegistry`: put, get, head, history and provenance of versioned entities."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

if typing.TYPE_CHECKING:  # redis-py is imported where used: `import graftq` stays light
    import redis

from graftq.errors import EntityNotFound, InvalidReference, IsolationError, VersionConflict
from graftq.registry import commit, index, overlay, references, retention
from graftq.registry.entity import Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.keys import Keys
from graftq.registry.overlay import OverlayClient
from graftq.registry.tree import as_data, build, decode_doc, walk

# One round trip for everything a call reads before it runs: an execution record
# (ARGV[3], "" for none), what each uuid (ARGV[4..]) means — a version id means
# itself, a lineage id its head — and every document of the trees below, breadth
# first through each document's kids. Returns: the record or "", then per uuid the
# version it means or "", then id, raw pairs ("" when missing).
_SNAPSHOT = """
local versions, heads, said = ARGV[1], ARGV[2], ARGV[4]
local out = {ARGV[3] ~= '' and redis.call('GET', ARGV[3]) or ''}
if said ~= '' then
  local ok, now = pcall(cjson.decode, redis.call('GET', said) or '')
  if not (ok and type(now) == 'table' and now.status == 'SUCCESS') then
    if ARGV[6] ~= '' then
      redis.call('SET', said, ARGV[5], 'EX', ARGV[6])
    else
      redis.call('SET', said, ARGV[5])
    end
    redis.call('PUBLISH', said, ARGV[5])
  end
end
local queue, seen, i = {}, {}, 1
for n = 7, #ARGV do
  local id = ARGV[n]
  if not redis.call('GET', versions .. id) then
    id = redis.call('GET', heads .. id) or ''
  end
  out[#out + 1] = id
  if id ~= '' then queue[#queue + 1] = id end
end
while i <= #queue do
  local id = queue[i]
  i = i + 1
  if not seen[id] then
    seen[id] = true
    local raw = redis.call('GET', versions .. id)
    out[#out + 1] = id
    out[#out + 1] = raw or ''
    if raw then
      local ok, doc = pcall(cjson.decode, raw)
      if ok and type(doc) == 'table' and type(doc.kids) == 'table' then
        for _, kid in ipairs(doc.kids) do
          if type(kid) == 'table' and type(kid[2]) == 'string' then
            queue[#queue + 1] = kid[2]
          end
        end
      end
    end
  end
end
return out
"""


@dataclass(frozen=True)
class Announcement:
    """A job's state, told in a snapshot's round trip: `document` is set on `key` (for
    `expires` seconds, if given) and published there, unless the document stored there
    already says ``"status": "SUCCESS"`` (a finished job is never told as running)."""

    key: str
    document: str
    expires: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """What some uuids mean now, the documents of their trees, and an execution record.

    `meaning` maps each known uuid to the version it means and whether it was
    pinned (a version id) rather than a lineage id (its head).
    """

    meaning: dict[str, tuple[str, bool]]
    docs: dict[str, dict[str, Any]]
    execution: Execution | None = None

    def build(self, ecs_id: str) -> Entity:
        """A fresh copy of one version from the snapshot."""
        return build(ecs_id, self.docs)


E = typing.TypeVar("E", bound=Entity)


@dataclass(frozen=True)
class Committed:
    """The result of `EntityRegistry.commit`."""

    entities: list[Entity]
    execution: Execution | None = None
    branched: bool = False
    replayed: bool = False


def as_uuid(value: UUID | str) -> UUID:
    """`value` as a UUID; a malformed id is an unknown one."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise EntityNotFound(f"{value!r} is not an entity id (expected a UUID)") from None


def _told(announce: Announcement) -> tuple[str, str, str]:
    expires = "" if announce.expires is None else str(int(announce.expires))
    return announce.key, announce.document, expires


class EntityRegistry:
    """Versioned Pydantic entities in one Redis database (`app.entities`).

    `client` must decode responses to str. Every commit is one atomic
    WATCH/MULTI/EXEC transaction, retried at most `max_retries` times when a
    concurrent writer touches a watched key.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "graftq", max_retries: int = 16
    ) -> None:
        self.keys = Keys(prefix)
        self.max_retries = max_retries
        self._redis = client
        self._overlay: OverlayClient | None = None
        self._snapshot_script = client.register_script(_SNAPSHOT)

    @property
    def _client(self) -> Any:
        if not overlay.isolated():
            return self._redis
        if self._overlay is None:  # the first use inside an isolated call
            self._overlay = OverlayClient(self._redis)
        return self._overlay

    @property
    def client(self) -> redis.Redis:
        """The Redis client (inside an isolated call: the private overlay)."""
        return typing.cast("redis.Redis", self._client)

    @property
    def isolated(self) -> bool:
        """True inside an isolated call, where writes go to a private overlay."""
        return overlay.isolated()

    # -- writing ---------------------------------------------------------------

    def put(self, entity: E, *, branch: bool = False) -> E:
        """Store the tree; returns the stored copy. The caller's object is never mutated."""
        return typing.cast(E, self.commit([entity], branch=branch).entities[0])

    def commit(
        self,
        roots: Sequence[Entity],
        *,
        branch: bool = False,
        strict: Mapping[str, frozenset[str]] | None = None,
        execution: Execution | None = None,
        memo_key: str | None = None,
        also: commit.Also | None = None,
    ) -> Committed:
        """Store several trees (and an execution record) in one transaction.

        A moved head is a `VersionConflict`; with `branch`, only where `strict` (lineage →
        the versions of it read by lineage reference) does not list the head, and the
        others' new versions are stored as branches. With an
        `execution` whose id already has a successful record, nothing is written
        and the recorded execution comes back with `replayed=True`. `also` gives
        further commands for the transaction that records the execution.
        """
        request = commit.Request(
            trees=[walk(root) for root in roots],
            branch=branch,
            strict=strict or {},
            derived_from=execution.id if execution else None,
            execution=execution,
            memo_key=memo_key,
            also=also,
        )
        outcome = _attempted(self._client, self.keys, request, self.max_retries)
        if overlay.isolated():  # what a body stored: see `overlay.restamped`
            overlay.made((new.ecs_id, new.parent_id) for new in outcome.plan.new)
        return Committed(outcome.entities, outcome.execution, outcome.branched, outcome.replayed)

    def check(self, roots: Sequence[Entity], *, branch: bool = False) -> None:
        """Raise what `commit(roots, branch=branch)` would refuse them with; write nothing.

        The trees are committed to a private overlay that reads Redis (as an isolated
        body's store does), which is then dropped.
        """
        request = commit.Request(trees=[walk(root) for root in roots], branch=branch)
        private = OverlayClient(self._redis)
        try:
            _attempted(private, self.keys, request, self.max_retries)
        finally:
            private.close()

    def record_failure(self, execution: Execution, *, replace: bool = False) -> None:
        """Record a failed execution, unless one is recorded already.

        With `replace`, an earlier FAILURE record gives way (never a SUCCESS one).
        """
        if replace:
            self.commit([], execution=execution)  # refuses to write over a success
        else:
            self._client.set(
                self.keys.execution(execution.id), execution.model_dump_json(), nx=True
            )

    # -- reading ---------------------------------------------------------------

    def get(self, ecs_id: UUID | str) -> Entity:
        """That exact version (root or sub-entity) as a fresh copy."""
        return self.get_many([ecs_id])[0]

    def get_many(self, ecs_ids: Iterable[UUID | str]) -> list[Entity]:
        """Several versions in one round trip, in the order asked."""
        wanted = [str(as_uuid(i)) for i in ecs_ids]
        docs = self._load_all(wanted)
        return [build(ecs_id, docs) for ecs_id in wanted]

    def snapshot(
        self,
        uuids: Iterable[UUID | str],
        *,
        execution_id: str | None = None,
        announce: Announcement | None = None,
    ) -> Snapshot:
        """In one round trip: what each uuid means now, the trees below, and an execution;
        with `announce`, that state is told in the same round trip.

        Unknown uuids are left out of `meaning`. Inside an isolated call (whose writes
        are private) nothing is announced.
        """
        ids = list(dict.fromkeys(str(as_uuid(u)) for u in uuids))
        record = "" if execution_id is None else self.keys.execution(execution_id)
        if self.isolated:
            raw, meant, docs = self._snapshot_by_level(record, ids)
        else:
            prefixes = (self.keys.version_prefix, self.keys.head_prefix)
            told = ("", "", "") if announce is None else _told(announce)
            flat = self._snapshot_script(args=[*prefixes, record, *told, *ids])
            raw, meant = flat[0], flat[1 : 1 + len(ids)]
            rest = flat[1 + len(ids) :]
            docs = {rest[n]: rest[n + 1] for n in range(0, len(rest), 2)}
        meaning = {
            uid: (version, version == uid)
            for uid, version in zip(ids, meant, strict=True)
            if version
        }
        parsed = {i: decode_doc(i, doc) for i, doc in docs.items() if doc}
        execution = Execution.model_validate_json(raw) if raw else None
        return Snapshot(meaning, parsed, execution)

    def get_data(self, ecs_ids: Iterable[UUID | str]) -> list[dict[str, Any]]:
        """Versions as plain JSON data (each entity with its "type"): no Entity class needed."""
        wanted = [str(as_uuid(i)) for i in ecs_ids]
        docs = self._load_all(wanted)
        return [as_data(ecs_id, docs) for ecs_id in wanted]

    def head_id(self, lineage_id: UUID | str) -> str:
        """The ecs_id of the lineage's current version."""
        lineage = str(as_uuid(lineage_id))
        found = cast(str | None, self._client.get(self.keys.head(lineage)))
        if found is None:
            raise EntityNotFound(self._not_found(lineage, "lineage"))
        return found

    def head(self, lineage_id: UUID | str) -> Entity:
        """The current version of a lineage."""
        return self.get(self.head_id(lineage_id))

    def history(self, lineage_id: UUID | str) -> list[Entity]:
        """Every stored version of the lineage, branches included, oldest first."""
        return self.get_many(self.version_ids(lineage_id))

    def version_ids(self, lineage_id: UUID | str) -> list[str]:
        """The ecs_ids of the lineage's versions in commit order."""
        lineage = str(as_uuid(lineage_id))
        ids = cast(list[str], self._client.lrange(self.keys.history(lineage), 0, -1))
        if not ids:
            raise EntityNotFound(self._not_found(lineage, "lineage"))
        return ids

    def classify(self, uuids: Iterable[UUID | str]) -> dict[str, tuple[str, bool]]:
        """For each uuid, the version it means now and whether it was pinned.

        A version id means itself (pinned); a lineage id means its head. One
        round trip for any number of ids; unknown ids are left out.
        """
        ids = list(dict.fromkeys(str(as_uuid(u)) for u in uuids))
        keys = [self.keys.version(i) for i in ids] + [self.keys.head(i) for i in ids]
        values = cast(list[str | None], self._client.mget(keys))
        found: dict[str, tuple[str, bool]] = {}
        for n, uid in enumerate(ids):
            if values[n] is not None:
                found[uid] = (uid, True)
            elif (head := values[len(ids) + n]) is not None:
                found[uid] = (head, False)
        return found

    def resolve(self, ref: str) -> Any:
        """The value one reference string points at (section 4 of the SPEC)."""
        if not isinstance(ref, str) or not ref.startswith("@"):
            raise InvalidReference(f"{ref!r} is not a reference: it must start with '@'")
        return references.resolve(self, ref).value

    def provenance(self, ecs_id: UUID | str) -> Execution | None:
        """The execution that produced that version; None if it was stored directly."""
        version = str(as_uuid(ecs_id))
        raw = cast(str | None, self._client.get(self.keys.version(version)))
        if raw is None:
            raise EntityNotFound(self._not_found(version, "version"))
        execution_id = decode_doc(version, raw)["derived_from"]
        return None if execution_id is None else self.execution(execution_id)

    def execution(self, execution_id: str) -> Execution | None:
        """The recorded execution with that id, if any."""
        raw = self._client.get(self.keys.execution(execution_id))
        return None if raw is None else Execution.model_validate_json(raw)

    def memoized(self, memo_key: str) -> Execution | None:
        """The successful execution cached under `memo_key`, if any."""
        execution_id = self._client.get(memo_key)
        done = None if execution_id is None else self.execution(execution_id)
        return done if done is not None and done.status is ExecutionStatus.SUCCESS else None

    def lineage_mermaid(self, lineage_id: UUID | str) -> str:
        """A Mermaid `graph TD` of the lineage's versions, edges labelled by callable."""
        ids = self.version_ids(lineage_id)
        head = self.head_id(lineage_id)
        raws = cast(list[str | None], self._client.mget([self.keys.version(i) for i in ids]))
        docs = [decode_doc(i, raw or "") for i, raw in zip(ids, raws, strict=True)]
        runs = sorted({d["derived_from"] for d in docs if d["derived_from"]})
        labels = dict(zip(runs, self.callable_names(runs), strict=True))
        lines = ["graph TD"]
        for doc in docs:
            node = _mermaid_id(doc["ecs_id"])
            mark = " (head)" if doc["ecs_id"] == head else ""
            lines.append(f'    {node}["{doc["ecs_id"][:8]}{mark}"]')
            if doc["parent_id"]:
                label = _mermaid_label(labels.get(doc["derived_from"], "put"))
                lines.append(f"    {_mermaid_id(doc['parent_id'])} -->|{label}| {node}")
        return "\n".join(lines)

    # -- finding and retention ----------------------------------------------------

    def heads(self, entity_type: type[E], *, batch: int = 100) -> Iterator[E]:
        """The head of every lineage of `entity_type` (subclasses included), oldest first.

        Pages through the type index the commit keeps (never KEYS or SCAN):
        three round trips per `batch` lineages.
        """
        if not (isinstance(entity_type, type) and issubclass(entity_type, Entity)):
            raise TypeError(
                f"heads() takes an Entity class, got {type(entity_type).__name__} "
                f"{entity_type!r:.80}; by stored type name: head_data(type_name)"
            )
        for type_name in index.type_names(entity_type):
            for head_ids in index.head_batches(self._client, self.keys, type_name, batch):
                docs = self._load(head_ids)
                for ecs_id in head_ids:
                    if ecs_id in docs and docs[ecs_id]["type"] == type_name:
                        yield typing.cast(E, build(ecs_id, docs))

    def head_data(self, type_name: str, *, batch: int = 100) -> Iterator[dict[str, Any]]:
        """`heads` as plain JSON data, by stored type name (no Entity class needed)."""
        for head_ids in index.head_batches(self._client, self.keys, type_name, batch):
            docs = self._load(head_ids)
            for ecs_id in head_ids:
                if ecs_id in docs and docs[ecs_id]["type"] == type_name:
                    yield as_data(ecs_id, docs)

    def prune(
        self, keep: int, *, older_than: timedelta | None = None, dry_run: bool = False
    ) -> retention.PruneReport:
        """Remove versions beyond the newest `keep` of each lineage that nothing needs.

        Never a head, nor what a kept version's tree or a kept Execution record
        needs; only versions older than `older_than` when given. Safe while
        workers commit (see `graftq.registry.retention`).
        """
        if self.isolated:
            raise IsolationError("prune is refused inside an isolated call: it would prune nothing")
        pruner = retention.Pruner(
            self.client, self.keys, keep=keep, older_than=older_than, now=datetime.now(UTC)
        )
        if dry_run:
            return pruner.report(pruner.plan(), dry_run=True)
        pruner.start()
        try:
            removed = pruner.apply(pruner.plan())
        finally:
            pruner.finish()
        return pruner.report(removed, dry_run=False)

    # -- internals -------------------------------------------------------------

    def callable_names(self, execution_ids: list[str]) -> list[str]:
        """The callable each execution ran ("?" for one not recorded), in one round trip."""
        if not execution_ids:
            return []
        raws = self._client.mget([self.keys.execution(i) for i in execution_ids])
        return [json.loads(raw)["callable"] if raw else "?" for raw in raws]

    def _load_all(self, ecs_ids: list[str]) -> dict[str, dict[str, Any]]:
        """`_load`, and `EntityNotFound` for the first of `ecs_ids` that is not stored."""
        docs = self._load(ecs_ids)
        for ecs_id in ecs_ids:
            if ecs_id not in docs:
                raise EntityNotFound(self._not_found(ecs_id, "version"))
        return docs

    def _load(self, ecs_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Parsed documents of these versions and all below them."""
        return self.snapshot(ecs_ids).docs if ecs_ids else {}

    def _snapshot_by_level(
        self, record: str, ids: list[str]
    ) -> tuple[str | None, list[str], dict[str, str | None]]:
        """`snapshot` for an isolated call, whose overlay runs no scripts."""
        keys = [self.keys.version(i) for i in ids] + [self.keys.head(i) for i in ids]
        values = self._client.mget(keys + ([record] if record else []))
        stored, heads = values[: len(ids)], values[len(ids) : 2 * len(ids)]
        meant = [
            uid if doc is not None else (head or "")
            for uid, doc, head in zip(ids, stored, heads, strict=True)
        ]
        found: dict[str, str | None] = {}
        frontier = list(dict.fromkeys(m for m in meant if m))
        while frontier:  # one batch per tree level
            raws = self._client.mget([self.keys.version(i) for i in frontier])
            found.update(zip(frontier, raws, strict=True))
            below = (kid for i, raw in zip(frontier, raws, strict=True) if raw
                     for _, kid in decode_doc(i, raw)["kids"])  # fmt: skip
            frontier = [kid for kid in dict.fromkeys(below) if kid not in found]
        return (values[-1] if record else None), meant, found

    def _not_found(self, uid: str, kind: str) -> str:
        other = "lineage" if kind == "version" else "version"
        key = self.keys.head(uid) if other == "lineage" else self.keys.version(uid)
        hint = ""
        try:
            if self._client.get(key) is not None:
                hint = f" ({uid} is a {other} id; use {'head' if other == 'lineage' else 'get'}())"
        except Exception:  # pragma: no cover - the hint is best effort
            pass
        return f"no entity {kind} {uid} in the store{hint}"


def _attempted(client: Any, keys: Keys, request: commit.Request, tries: int) -> commit.Outcome:
    """`commit.attempt` on `client` until no watched key changed under it, at most `tries`
    times; then `VersionConflict`."""
    for _ in range(tries):
        outcome = commit.attempt(client, keys, request)
        if not isinstance(outcome, commit.Retry):
            return outcome
        request = dataclasses.replace(request, lineages=outcome.lineages)
    raise VersionConflict(
        f"gave up after {tries} attempts: concurrent writers kept changing "
        f"lineages {sorted(request.lineages)}"
    )


def _mermaid_id(ecs_id: str) -> str:
    return "v" + ecs_id.replace("-", "")


def _mermaid_label(name: str) -> str:
    """An edge label Mermaid reads as text: a plain name as is, any other quoted, with
    each character Mermaid (or its HTML labels) would read as syntax as an entity code."""
    if re.fullmatch(r"[A-Za-z0-9_]+", name):
        return name
    return '"' + re.sub(r"[^A-Za-z0-9_.:/@ ]", lambda m: f"#{ord(m[0])};", name) + '"'
