"""Contention from the workers' own concurrency never exhausts re-runs (issue 7 item 5).

4 producers x 50 `increment("@<lineage>")` on one `-c 2` worker end at exactly 200,
in one chain of 200 versions, every time (SPEC section 5). CI runs the scenario
`GRAFTQ_CONTENTION_ROUNDS` times (default 3); `bench/contention.py` runs it 20 times.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graftq import App, EntityRegistry
from graftq.devserver import RedisServer
from tests.apps.school import Counter
from tests.integration.worker.conftest import Node, running

PRODUCERS, PER_PRODUCER = 4, 50
ROUNDS = int(os.environ.get("GRAFTQ_CONTENTION_ROUNDS", "3"))


@pytest.fixture(scope="module")
def contended(redis_server: RedisServer, broker_url: str) -> Iterator[Node]:
    node = Node(f"contended-{uuid.uuid4().hex[:6]}", concurrency=2)
    with running(redis_server.url, broker_url, node):
        yield node


def increments(app: App, lineage: str) -> tuple[list[Any], list[BaseException]]:
    """PRODUCERS threads submit PER_PRODUCER increments each, all released at once."""
    start = threading.Barrier(PRODUCERS)
    values: list[Any] = []
    errors: list[BaseException] = []

    def produce() -> None:
        start.wait()
        jobs = [app.submit("increment", {"counter": f"@{lineage}"}) for _ in range(PER_PRODUCER)]
        for job in jobs:
            try:
                values.append(job.get(timeout=300).value)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=produce) for _ in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    return values, errors


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_contended_increments_end_at_exactly_n(
    contended: Node, client_app: Callable[..., App], round_: int
) -> None:
    app = client_app(contended.queue)
    store: EntityRegistry = app.entities
    counter = store.put(Counter(value=0))
    total = PRODUCERS * PER_PRODUCER

    values, errors = increments(app, str(counter.lineage_id))

    assert errors == []
    assert sorted(values) == list(range(1, total + 1))
    head = store.head(counter.lineage_id)
    assert isinstance(head, Counter) and head.value == total
    assert len(store.version_ids(counter.lineage_id)) == total + 1
    attempts = [
        run.attempts
        for v in store.history(counter.lineage_id)[1:]
        if (run := store.provenance(v.ecs_id))
    ]
    print(
        f"round {round_}: head {head.value}/{total}, runs per job: max {max(attempts)}, "
        f"mean {sum(attempts) / len(attempts):.2f}"
    )
