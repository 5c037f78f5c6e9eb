"""Fuzz the entry points with hostile values (issue 10): only GraftError or pydantic's
ValidationError come out, a refused input writes and enqueues nothing, nothing hangs,
and the worker is alive afterwards.

Examples per test: GRAFTQ_FUZZ_EXAMPLES (CI: a few hundred in all); the bench mode is
``GRAFTQ_FUZZ_EXAMPLES=10000 pytest tests/reliability/test_fuzz.py --timeout 0 -s``.
Each test prints its outcomes by exception type.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from graftq import App, GraftError
from graftq.devserver import RedisServer
from tests.apps.hostile import make_app
from tests.apps.school import Student
from tests.integration.worker.conftest import Node, running
from tests.integration.worker.helpers import alive

SCALE = int(os.environ.get("GRAFTQ_FUZZ_EXAMPLES", "0"))


def examples(ci: int) -> Any:
    return settings(
        max_examples=SCALE or ci,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


def nested(depth: int) -> Any:
    value: Any = []
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.text(max_size=40).map(lambda text: "@" + text),
    st.uuids().map(lambda uid: f"@{uid}.a.0"),
    st.binary(max_size=8),
    st.datetimes(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.builds(object),
    st.just({"__type__": "uuid", "__value__": {"hex": "0" * 32}}),
    st.frozensets(st.integers(), max_size=3),
)
VALUES = st.one_of(
    st.recursive(
        LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
            st.sets(st.integers(), max_size=3),
        ),
        max_leaves=16,
    ),
    st.integers(min_value=60, max_value=2000).map(nested),
)
CALLS = {
    "anything": ["value"],
    "deep": ["value"],
    "tag_count": ["tags"],
    "when": ["at"],
    "bonus": ["student_age", "bonus_amount"],
    "enroll": ["student", "extra"],
}
INPUTS = st.sampled_from(sorted(CALLS)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.dictionaries(st.sampled_from([*CALLS[name], "surplus"]), VALUES, max_size=3),
    )
)
ALLOWED = (GraftError, pydantic.ValidationError)


@pytest.fixture
def outcomes(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    seen: Counter[str] = Counter()
    yield seen
    print(f"\nfuzz {request.node.name}: {sum(seen.values())} examples: {dict(seen)}")


def attempt(action: Callable[[], Any], seen: Counter[str]) -> bool:
    """Run `action`; True if it was refused (with an allowed error)."""
    try:
        action()
    except ALLOWED as exc:
        seen[type(exc).__name__] += 1
        return True
    seen["accepted"] += 1
    return False


@pytest.fixture
def app(redis_url: str, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    monkeypatch.setenv("GRAFTQ_BROKER_URL", broker_url)
    monkeypatch.setenv("GRAFTQ_RESULT_BACKEND", broker_url)
    hostile = make_app()
    hostile.celery.conf.task_default_queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    return hostile


def test_fuzz_execute(app: App, redis_client: redis.Redis, outcomes: Counter[str]) -> None:
    @examples(ci=120)
    @given(call=INPUTS)
    def run(call: tuple[str, dict[str, Any]]) -> None:
        name, data = call
        before = redis_client.dbsize()
        if attempt(lambda: app.execute(name, data), outcomes):
            assert redis_client.dbsize() == before, f"refused {name}({data!r:.200}) wrote"

    run()


def test_fuzz_submit(
    app: App, redis_client: redis.Redis, broker_url: str, outcomes: Counter[str]
) -> None:
    broker = redis.Redis.from_url(broker_url)
    queue = app.celery.conf.task_default_queue

    @examples(ci=150)
    @given(call=INPUTS)
    def run(call: tuple[str, dict[str, Any]]) -> None:
        name, data = call
        stored, queued = redis_client.dbsize(), broker.llen(queue)
        if attempt(lambda: app.submit(name, data), outcomes):
            assert redis_client.dbsize() == stored and broker.llen(queue) == queued

    try:
        run()
    finally:
        broker.delete(queue)
        broker.close()


def test_fuzz_resolve(app: App, outcomes: Counter[str]) -> None:
    ada = app.entities.put(Student(name="Ada", age=20, tags=["a", "b"]))
    uids = st.sampled_from([str(ada.ecs_id), str(ada.lineage_id), str(uuid.uuid4())])
    segments = st.lists(
        st.one_of(st.sampled_from(["tags", "name", "0", "1", "²", "_x", "-1"]), st.text()),
        max_size=4,
    )
    references = st.one_of(
        st.tuples(uids, segments).map(lambda ref: "@" + ".".join([ref[0], *ref[1]])),
        st.text().map(lambda text: "@" + text),
        st.text(),
    )

    @examples(ci=200)
    @given(ref=references)
    def run(ref: str) -> None:
        attempt(lambda: app.entities.resolve(ref), outcomes)

    run()


@pytest.fixture(scope="module")
def fuzz_worker(redis_server: RedisServer, broker_url: str) -> Iterator[Node]:
    node = Node(f"fuzz-{uuid.uuid4().hex[:6]}", app_path="tests.apps.hostile:app")
    with running(redis_server.url, broker_url, node):
        yield node


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


def test_fuzz_raw_send_task(app: App, fuzz_worker: Node, outcomes: Counter[str]) -> None:
    main_pid = fuzz_worker.proc.pid
    assert main_pid is not None
    app.celery.conf.task_default_queue = fuzz_worker.queue
    bodies = st.tuples(
        st.sampled_from(sorted(CALLS)),
        st.lists(st.one_of(JSON, st.integers(60, 1500).map(nested)), max_size=2),
        st.dictionaries(st.sampled_from(["value", "input_data", "_graftq", "x"]), JSON, max_size=2),
    )

    @examples(ci=40)
    @given(body=bodies)
    @example(body=("anything", [], {"value": None}))  # once answered with a KeyError
    def run(body: tuple[str, list[Any], dict[str, Any]]) -> None:
        name, args, kwargs = body
        result = app.celery.send_task(f"graftq.{name}", args=args, kwargs=kwargs)
        attempt(lambda: app.job(result.id, name).get(timeout=60), outcomes)

    run()
    assert alive(main_pid) and fuzz_worker.proc.pid == main_pid
    assert app.submit("bonus", {"student_age": 2, "bonus_amount": 2.0}).get(timeout=30) == 4.0
