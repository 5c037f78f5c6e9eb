"""The store's commit is two round trips on the store's own client (SPEC 5, issue 9).

WATCH and the MGET of what the decision rests on go out together, then one
MULTI…EXEC: redis-py's `watch()` followed by `mget()` took a round trip each. A
connection that drops before the WATCH is answered is tried once more on a fresh
one, as redis-py does for WATCH, and leaves no reply behind for the next command.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from graftq.devserver import RedisServer
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.worker.connections import redis_client
from tests.apps.school import Counter
from tests.proxy import CuttingProxy


@pytest.fixture
def store(redis_url: str) -> Iterator[EntityRegistry]:
    """A store on the client an App gives its store (`app.entities`)."""
    client = redis_client(redis_url, Settings(redis_url=redis_url))
    yield EntityRegistry(client)
    client.close()


def sent_batches(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write to the server from now on: one per round trip."""
    batches: list[bytes] = []
    connection_class = client.connection_pool.connection_class
    send = connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        batches.append(b"".join(command) if isinstance(command, list) else bytes(command))
        send(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counting)
    return batches


def test_a_commit_is_two_round_trips(
    store: EntityRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = store.put(Counter(value=1))
    stored.value = 2
    batches = sent_batches(store.client, monkeypatch)

    committed = store.put(stored)

    assert [b"WATCH" in b and b"MGET" in b for b in batches] == [True, False], batches
    assert b"MULTI" in batches[1] and b"EXEC" in batches[1]
    assert store.head(stored.lineage_id).ecs_id == committed.ecs_id
    assert committed.value == 2 and committed.parent_id == stored.ecs_id


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> Iterator[CuttingProxy]:
    with CuttingProxy(redis_server.port) as running:
        yield running


@pytest.fixture
def proxied(proxy: CuttingProxy) -> Iterator[EntityRegistry]:
    """The store's own client, through the proxy."""
    client = redis_client(proxy.url, Settings(redis_url=proxy.url))
    yield EntityRegistry(client)
    client.close()


def test_a_reply_lost_before_the_watch_is_answered_is_tried_again(
    proxied: EntityRegistry, proxy: CuttingProxy, store: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    counter.value = 2
    proxy.cut_next(b"WATCH", b"MGET")

    committed = proxied.put(counter)

    assert proxy.cuts == 1
    assert store.head(counter.lineage_id).ecs_id == committed.ecs_id
    assert [v.value for v in store.history(counter.lineage_id)] == [1, 2]
    committed.value = 3  # the connection is clean: the next commit reads its own replies
    assert proxied.put(committed).value == 3
    assert [v.value for v in store.history(counter.lineage_id)] == [1, 2, 3]


def test_a_lost_exec_reply_after_a_batched_watch_is_read_back(
    proxied: EntityRegistry, proxy: CuttingProxy, store: EntityRegistry
) -> None:
    counter = proxied.put(Counter(value=1))
    counter.value = 2
    proxy.cut_next_exec()

    committed = proxied.put(counter)

    assert proxy.cuts == 1
    assert committed.value == 2 and committed.parent_id == counter.ecs_id
    assert [v.value for v in store.history(counter.lineage_id)] == [1, 2]
