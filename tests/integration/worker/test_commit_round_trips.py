"""The store's commit is two round trips on the store's own client (SPEC 5, issue 9).

WATCH and the MGET of what the decision rests on go out together, then one
MULTI…EXEC: redis-py's `watch()` followed by `mget()` took a round trip each. (Lost
replies on that path: `tests/integration/registry/test_commit_integrity.py`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.worker.connections import redis_client
from tests.apps.school import Counter


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
