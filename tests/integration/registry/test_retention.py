"""`prune`: what it removes, what it must keep, and that live commits never lose data to it."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from graftq.errors import EntityNotFound, GraftError, InvalidEntity, IsolationError
from graftq.registry.entity import Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.overlay import isolate_stores
from graftq.registry.retention import Pruner
from graftq.registry.store import EntityRegistry
from graftq.tasks.isolation import run_isolated
from tests.integration.registry.models import Address, Counter, Student

pytestmark = pytest.mark.integration


def chain(reg: EntityRegistry, length: int) -> list[Counter]:
    """A lineage of `length` Counter versions, oldest first."""
    versions = [reg.put(Counter(value=0))]
    for n in range(1, length):
        versions.append(reg.put(versions[-1].model_copy(update={"value": n})))
    return versions


def ran(reg: EntityRegistry, value: Entity, callable_name: str = "f") -> Entity:
    """Commit `value` as the output of a recorded execution."""
    now = datetime.now(UTC)
    execution = Execution(
        id=str(uuid.uuid4()),
        callable=callable_name,
        callable_version="1",
        inputs={},
        status=ExecutionStatus.SUCCESS,
        started_at=now,
        finished_at=now,
        worker="test",
    )
    return reg.commit([value], execution=execution).entities[0]


def exists(reg: EntityRegistry, ecs_id: object) -> bool:
    try:
        reg.get(str(ecs_id))
    except EntityNotFound:
        return False
    return True


def test_keep_n_removes_older_versions_with_their_history_entries(reg: EntityRegistry) -> None:
    versions = chain(reg, 6)
    report = reg.prune(keep=2)
    assert (report.versions, report.history_entries, report.lineages) == (4, 4, 1)
    assert report.bytes > 4 * 100  # each document is over 100 bytes of JSON
    lineage = versions[0].lineage_id
    assert reg.version_ids(lineage) == [str(v.ecs_id) for v in versions[-2:]]
    assert [exists(reg, v.ecs_id) for v in versions] == [False] * 4 + [True] * 2
    assert reg.head(lineage).ecs_id == versions[-1].ecs_id
    assert reg.prune(keep=2).versions == 0  # nothing left to remove


def test_dry_run_reports_the_same_and_removes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    chain(reg, 5)
    keys_before = sorted(redis_client.keys("*"))
    dry = reg.prune(keep=1, dry_run=True)
    assert dry.dry_run and dry.versions == 4 and "would remove" in str(dry)
    assert sorted(redis_client.keys("*")) == keys_before
    real = reg.prune(keep=1)
    assert (real.versions, real.executions, real.bytes) == (dry.versions, dry.executions, dry.bytes)
    assert "removed 4 versions" in str(real)


def test_heads_are_never_removed_even_behind_newer_branches(reg: EntityRegistry) -> None:
    first = reg.put(Student(name="Ada", age=20))
    head = reg.put(first.model_copy(update={"age": 21}))
    branches = [reg.put(first.model_copy(update={"age": 30 + n}), branch=True) for n in range(3)]
    reg.prune(keep=1)
    assert reg.head(first.lineage_id).ecs_id == head.ecs_id
    assert exists(reg, head.ecs_id) and exists(reg, branches[-1].ecs_id)
    assert not exists(reg, first.ecs_id) and not exists(reg, branches[0].ecs_id)
    reg.prune(keep=0)
    assert reg.version_ids(first.lineage_id) == [str(head.ecs_id)]


def test_a_sub_entity_in_a_kept_tree_is_kept_whatever_its_own_lineage(
    reg: EntityRegistry,
) -> None:
    v1 = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert v1.address is not None
    moved = v1.model_copy(deep=True)
    assert moved.address is not None
    moved.address.city = "Lyon"
    reg.put(moved)  # the address lineage's head is now Lyon
    branch = reg.put(v1.model_copy(update={"name": "Ada B."}), branch=True)  # still Paris
    reg.prune(keep=1)
    assert not exists(reg, v1.ecs_id)
    kept = reg.get(branch.ecs_id)  # the newest Student still loads in full
    assert isinstance(kept, Student) and kept.address is not None
    assert kept.address.city == "Paris" and kept.address.ecs_id == v1.address.ecs_id


def test_execution_records_go_with_their_versions_and_stay_with_kept_ones(
    reg: EntityRegistry,
) -> None:
    first = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    outputs = []
    current: Entity = first
    for age in (21, 22, 23):
        current = ran(reg, current.model_copy(update={"age": age}), "birthday")
        outputs.append(current)
    gone, kept = outputs[0], outputs[-1]
    report = reg.prune(keep=1)
    assert report.executions == 2
    assert reg.provenance(kept.ecs_id) is not None  # a kept version keeps its provenance
    assert gone.derived_from is not None and reg.execution(gone.derived_from) is None


def test_a_kept_execution_keeps_all_its_outputs(reg: EntityRegistry) -> None:
    first = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert first.address is not None
    moved = first.model_copy(deep=True)
    assert moved.address is not None
    moved.address.city = "Lyon"
    out = ran(reg, moved, "move")  # one execution, a new Student and a new Address
    assert isinstance(out, Student) and out.address is not None
    reg.put(out.model_copy(update={"age": 21}))  # the Student lineage moves on
    reg.prune(keep=1)
    # The Lyon address is kept (the head's tree), so its execution is kept, and
    # so is that execution's output: the older Student a replay would load.
    assert reg.provenance(out.address.ecs_id) is not None
    assert exists(reg, out.ecs_id)
    assert not exists(reg, first.ecs_id)


def test_older_than_spares_recent_versions(reg: EntityRegistry) -> None:
    chain(reg, 4)
    assert reg.prune(keep=1, older_than=timedelta(hours=1)).versions == 0
    assert reg.prune(keep=1, older_than=timedelta(0)).versions == 3


def test_older_than_reaching_before_any_date_removes_nothing(reg: EntityRegistry) -> None:
    versions = chain(reg, 3)
    report = reg.prune(keep=1, older_than=timedelta(days=999_999))  # before year 1
    assert report.versions == 0
    assert all(exists(reg, version.ecs_id) for version in versions)


def test_a_version_a_commit_reads_during_the_prune_is_kept(reg: EntityRegistry) -> None:
    v1 = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert v1.address is not None
    moved = v1.model_copy(deep=True)
    assert moved.address is not None
    moved.address.city = "Lyon"
    reg.put(moved)
    pruner = Pruner(reg.client, reg.keys, keep=1, now=datetime.now(UTC))
    pruner.start()
    try:
        planned = pruner.plan()
        assert str(v1.address.ecs_id) in planned.versions  # Paris is not needed ... yet
        # ... when a job pinned to v1 commits a branch that reuses the Paris address
        branch = reg.put(v1.model_copy(update={"name": "Ada B."}), branch=True)
        removed = pruner.apply(planned)
    finally:
        pruner.finish()
    assert str(v1.address.ecs_id) not in removed.versions
    kept = reg.get(branch.ecs_id)
    assert isinstance(kept, Student) and kept.address is not None
    assert kept.address.city == "Paris"
    assert not reg.client.exists(reg.keys.prune)


def test_a_second_prune_is_refused_while_one_runs(reg: EntityRegistry) -> None:
    chain(reg, 3)
    first = Pruner(reg.client, reg.keys, keep=1, now=datetime.now(UTC))
    first.start()
    try:
        with pytest.raises(GraftError, match="another prune"):
            reg.prune(keep=1)
        reg.client.expire(reg.keys.prune, 7)
        assert reg.prune(keep=1, dry_run=True).versions == 2  # a dry run needs no lock
        assert 0 < reg.client.ttl(reg.keys.prune) <= 7  # and writes nothing, not even to it
    finally:
        first.finish()
    assert reg.prune(keep=1).versions == 2


def test_prune_under_a_stream_of_commits_leaves_every_head_and_kept_version_whole(
    redis_url: str,
) -> None:
    """Writers extend lineages and branch from old versions (reusing old sub-entities)
    while prunes run; afterwards everything still listed loads in full."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        reg = EntityRegistry(client)
        roots = [
            reg.put(Student(name=f"s{n}", age=0, address=Address(city="c0"))) for n in range(4)
        ]
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = [0]

    def write(root: Student) -> None:
        try:
            with redis.Redis.from_url(redis_url, decode_responses=True) as client:
                store = EntityRegistry(client)
                old = root
                step = 0
                while not stop.is_set() or step < 40:
                    step += 1
                    head = store.head(root.lineage_id)
                    assert isinstance(head, Student) and head.address is not None
                    head.age += 1
                    if step % 3 == 0:
                        head.address.city = f"c{step}"  # a nested change
                    store.put(head)
                    if step % 5 == 0:  # a job pinned to an older version: a branch
                        try:
                            pinned = store.get(old.ecs_id)
                        except EntityNotFound:  # pruned meanwhile: take a newer one
                            pinned = store.head(root.lineage_id)
                        assert isinstance(pinned, Student)
                        try:
                            store.put(pinned.model_copy(update={"name": f"b{step}"}), branch=True)
                        except InvalidEntity as exc:  # what it read was pruned before it wrote
                            assert "removed by a prune" in str(exc)
                        old = head
                    commits[0] += 1
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(root,)) for root in roots]
    for thread in writers:
        thread.start()
    removed = 0
    try:
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            store = EntityRegistry(client)
            for _ in range(6):
                removed += store.prune(keep=2).versions
    finally:
        stop.set()
        for thread in writers:
            thread.join(60)
    assert not errors, errors
    assert removed > 0 and commits[0] >= 4 * 40
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        store = EntityRegistry(client)
        listed = [i for root in roots for i in store.version_ids(root.lineage_id)]
        listed += [i for a in store.heads(Address) for i in store.version_ids(a.lineage_id)]
        for ecs_id in listed:  # every version still listed loads with its whole tree
            store.get(ecs_id)
        for root in roots:
            head = store.head(root.lineage_id)
            assert isinstance(head, Student) and head.address is not None
        assert not client.exists(store.keys.prune)


def test_prune_is_refused_inside_an_isolated_call(reg: EntityRegistry) -> None:
    chain(reg, 3)

    def inside() -> str:
        try:
            reg.prune(keep=1)
        except IsolationError as exc:
            return str(exc)
        return "pruned"

    said = run_isolated(inside, encode=str.encode, decode=bytes.decode, setup=isolate_stores)
    assert "refused inside an isolated call" in said
    assert reg.prune(keep=1).versions == 2  # nothing was removed by the child
