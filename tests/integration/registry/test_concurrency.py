"""Concurrent read-modify-put on one lineage: no lost update, one linear history."""

from __future__ import annotations

import itertools
import threading

import redis

from graftq.errors import VersionConflict
from graftq.registry.store import EntityRegistry
from tests.apps.school import Counter

THREADS = 8
INCREMENTS = 10


def test_concurrent_increments_lose_nothing_and_stay_linear(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        lineage = EntityRegistry(client).put(Counter(value=0)).lineage_id
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []
    conflicts = [0] * THREADS

    def work(index: int) -> None:
        try:
            with redis.Redis.from_url(redis_url, decode_responses=True) as client:
                reg = EntityRegistry(client)
                start.wait(timeout=30)
                for _ in range(INCREMENTS):
                    for _attempt in range(10_000):
                        counter = reg.head(lineage)
                        assert isinstance(counter, Counter)
                        counter.value += 1
                        try:
                            reg.put(counter)
                            break
                        except VersionConflict:
                            conflicts[index] += 1
                    else:
                        raise AssertionError("never got a write through")
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        reg = EntityRegistry(client)
        head = reg.head(lineage)
        history = reg.history(lineage)
    assert isinstance(head, Counter)
    assert head.value == THREADS * INCREMENTS
    assert len(history) == THREADS * INCREMENTS + 1
    assert history[-1].ecs_id == head.ecs_id
    assert history[0].parent_id is None
    for previous, version in itertools.pairwise(history):
        assert version.parent_id == previous.ecs_id
    assert [getattr(v, "value", None) for v in history] == list(range(THREADS * INCREMENTS + 1))
    assert sum(conflicts) > 0  # the writers did collide: the test exercised conflicts
