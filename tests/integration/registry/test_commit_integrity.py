"""What a commit refuses and how it survives a lost reply (issue 7 items 2, 4, 8).

* Every document is validated before anything is written (SPEC section 3).
* No write can make a reference mean something else: an ecs_id that is a stored
  lineage_id, or a lineage_id that is a stored ecs_id, is refused (SPEC section 2).
* A commit whose EXEC ran but whose reply was lost is read back, never retried as a
  conflict and never written twice (SPEC section 5).
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

import pydantic
import pytest
import redis

from graftq.devserver import RedisServer
from graftq.errors import InvalidEntity
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.worker.connections import redis_client
from tests.apps.school import Address, Counter, Student
from tests.integration.registry.helpers import snapshot
from tests.proxy import CuttingProxy

# -- validation before write ------------------------------------------------------------


def test_put_of_an_invalid_field_writes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Student(name="B", age=1))
    stored.age = "old"  # type: ignore[assignment]  # plain assignment is not validated
    before = snapshot(redis_client)

    with pytest.raises(pydantic.ValidationError) as caught:
        reg.put(stored)

    assert "age" in str(caught.value)
    assert snapshot(redis_client) == before
    assert reg.head(stored.lineage_id).age == 1  # the head still reads back


def test_invalid_sub_entity_writes_nothing(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    stored = reg.put(Student(name="B", age=1, address=Address(city="Rome")))
    assert stored.address is not None
    stored.address.city = 12  # type: ignore[assignment]
    before = snapshot(redis_client)

    with pytest.raises(pydantic.ValidationError):
        reg.put(stored)

    assert snapshot(redis_client) == before


def test_first_put_of_an_invalid_entity_writes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = Student(name="B", age=1)
    student.tags = "not a list"  # type: ignore[assignment]

    with pytest.raises(pydantic.ValidationError):
        reg.put(student)

    assert snapshot(redis_client) == {}


# -- identity: a uuid in a reference always means one thing ------------------------------


def test_ecs_id_equal_to_a_stored_lineage_id_is_refused(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    original = reg.put(Student(name="Ada", age=20))
    intruder = Student(name="Eve", age=99, ecs_id=original.lineage_id)
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity) as caught:
        reg.put(intruder)

    assert str(original.lineage_id) in str(caught.value)
    assert snapshot(redis_client) == before
    assert reg.resolve(f"@{original.lineage_id}.name") == "Ada"


def test_lineage_id_equal_to_a_stored_ecs_id_is_refused(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    original = reg.put(Student(name="Ada", age=20))
    intruder = Student(name="Eve", age=99, lineage_id=original.ecs_id)
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity) as caught:
        reg.put(intruder)

    assert str(original.ecs_id) in str(caught.value)
    assert snapshot(redis_client) == before
    assert reg.resolve(f"@{original.ecs_id}.name") == "Ada"


def test_a_sub_entity_cannot_take_a_stored_lineage_id(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    original = reg.put(Address(city="Paris"))
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity):
        reg.put(Student(name="Eve", age=1, address=Address(city="X", ecs_id=original.lineage_id)))

    assert snapshot(redis_client) == before


def test_two_new_entities_of_one_commit_cannot_swap_ids(reg: EntityRegistry) -> None:
    shared = uuid4()
    first = Address(city="A", ecs_id=shared)
    second = Address(city="B", lineage_id=shared)

    with pytest.raises(InvalidEntity):
        reg.commit([first, second])


# -- a lost reply ------------------------------------------------------------------------

# A plain redis-py client, and the client an App gives its store, which sends WATCH and
# its MGET in one round trip (`graftq.worker.connections`).
CLIENTS: dict[str, Callable[[str], redis.Redis]] = {
    "redis-py": lambda url: redis.Redis.from_url(url, decode_responses=True),
    "store client": lambda url: redis_client(url, Settings(redis_url=url)),
}


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> CuttingProxy:
    with CuttingProxy(redis_server.port) as running:
        yield running


@pytest.fixture(params=sorted(CLIENTS))
def proxied(proxy: CuttingProxy, request: pytest.FixtureRequest) -> EntityRegistry:
    client = CLIENTS[request.param](proxy.url)
    yield EntityRegistry(client)
    client.close()


@pytest.mark.parametrize("proxied", ["store client"], indirect=True)  # redis-py's: no retry
def test_a_reply_lost_before_the_watch_is_answered_is_tried_again(
    proxied: EntityRegistry, proxy: CuttingProxy, reg: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    counter.value = 2
    proxy.cut_next(b"WATCH")

    committed = proxied.put(counter)

    assert proxy.cuts == 1
    assert [version.value for version in reg.history(counter.lineage_id)] == [1, 2]
    committed.value = 3  # the connection is clean: the next commit reads its own replies
    assert proxied.put(committed).value == 3
    assert reg.head(counter.lineage_id).value == 3


@pytest.mark.parametrize("proxied", ["store client"], indirect=True)
def test_a_connection_dropped_while_watching_re_plans_the_commit(
    proxied: EntityRegistry, proxy: CuttingProxy, reg: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    counter.value = 2
    proxy.cut_next(b"WATCH", keep=len(b"+OK\r\n"))  # WATCH answered, its MGET's reply lost

    committed = proxied.put(counter)

    assert proxy.cuts == 1
    assert committed.value == 2 and committed.parent_id == counter.ecs_id
    assert [version.value for version in reg.history(counter.lineage_id)] == [1, 2]


def test_lost_exec_reply_of_a_new_version_is_read_back(
    proxied: EntityRegistry, proxy: CuttingProxy, reg: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    counter.value = 2
    proxy.cut_next_exec()

    stored = proxied.put(counter)

    assert proxy.cuts == 1
    assert stored.value == 2 and stored.parent_id == counter.ecs_id
    history = reg.history(counter.lineage_id)
    assert [version.value for version in history] == [1, 2]
    assert reg.head_id(counter.lineage_id) == str(stored.ecs_id)


def test_lost_exec_reply_of_a_branch_is_not_written_twice(
    proxied: EntityRegistry, proxy: CuttingProxy, reg: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    rival = counter.model_copy()
    rival.value = 5
    reg.put(rival)
    counter.value = 2
    proxy.cut_next_exec()

    stored = proxied.put(counter, branch=True)

    assert proxy.cuts == 1
    assert sorted(version.value for version in reg.history(counter.lineage_id)) == [1, 2, 5]
    assert reg.head(counter.lineage_id).value == 5
    assert stored.value == 2


def test_lost_exec_reply_of_a_first_version(
    proxied: EntityRegistry, proxy: CuttingProxy, reg: EntityRegistry
) -> None:
    proxy.cut_next_exec()

    stored = proxied.put(Counter(value=3))

    assert proxy.cuts == 1
    assert [version.ecs_id for version in reg.history(stored.lineage_id)] == [stored.ecs_id]
