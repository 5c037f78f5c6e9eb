"""Input bounds in `app.execute` (SPEC 4): too deep or not JSON → InvalidInput, nothing stored.

Issue 10 items 1-3: a deep input used to raise a bare RecursionError, and a set or
bytes in an `Any` parameter ran the body and then failed writing its Execution record.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis

from graftq import App, InvalidInput
from graftq.tasks.bounds import MAX_DEPTH
from tests.apps.hostile import make_app
from tests.apps.school import Student


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    return make_app()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


class Color(enum.IntEnum):
    RED = 1


NOT_CARRIED: list[tuple[str, Any]] = [
    ("set", {1, 2}),
    ("bytes", b"raw"),
    ("non-utf8 bytes", b"\xff\xfe"),
    ("object", object()),
    ("nan", float("nan")),
    ("datetime in Any", datetime(2024, 1, 1, tzinfo=UTC)),
    ("IntEnum in Any", Color.RED),
    ("tuple in Any", (1, 2)),
    ("int dict key", {1: "one"}),
    ("tuple dict key", {(1, 2): "pair"}),
    ("nested set", {"a": [{"b": {3}}]}),
    ("kombu envelope", {"__type__": "uuid", "__value__": {"hex": "0" * 32}}),
    # A lone surrogate is a str but no UTF-8: it ran the body, then failed writing the
    # Execution record with pydantic's serialization error, and left no record.
    ("lone surrogate", "caf\ud800"),
    ("lone surrogate in a list", ["ok", "\udfff"]),
    ("lone surrogate dict key", {"\ud83d": 1}),
]


@pytest.mark.parametrize(("what", "value"), NOT_CARRIED, ids=[w for w, _ in NOT_CARRIED])
@pytest.mark.parametrize("name", ["anything", "anything_object"])
def test_values_json_cannot_carry_are_refused_before_anything_runs(
    app: App, redis_client: redis.Redis, name: str, what: str, value: Any
) -> None:
    with pytest.raises(InvalidInput) as raised:
        app.execute(name, {"value": value})
    assert "'value'" in str(raised.value)
    assert redis_client.dbsize() == 0, f"{what}: something was written"


def test_refused_entity_input_is_not_stored(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidInput, match="'extra'"):
        app.execute("enroll", {"student": Student(name="Ann", age=20), "extra": {1, 2}})
    assert redis_client.dbsize() == 0


def test_values_that_round_trip_through_their_parameter_type_pass(app: App) -> None:
    moment = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert app.execute("when", {"at": moment}) == moment.isoformat()
    assert app.execute("tag_count", {"tags": {1, 2, 3}}) == 3
    assert app.execute("deep", {"value": nested(MAX_DEPTH)}) == 1


def test_a_value_that_does_not_validate_as_given_is_a_validation_error(app: App) -> None:
    with pytest.raises(pydantic.ValidationError):
        app.execute("tag_count", {"tags": {"x"}})


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 495, 5000])
def test_too_deep_input_is_invalid_input_not_recursion_error(
    app: App, redis_client: redis.Redis, depth: int
) -> None:
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH}"):
        app.execute("deep", {"value": nested(depth)})
    assert redis_client.dbsize() == 0


def test_a_cyclic_input_is_too_deep(app: App) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidInput, match="deeper than"):
        app.execute("anything", {"value": loop})


def test_refused_input_never_runs_the_body(app: App, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(InvalidInput):
        app.execute("mark", {"marker_file": str(marker), "extra": {1}})
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "path", "arrives"),
    [
        ({"k": ["ok", ("t", 1)]}, "value.k.1", "tuple arrives as list"),
        ({"when": datetime(2024, 1, 1, tzinfo=UTC)}, "value.when", "datetime arrives as str"),
        ([1, Color.RED], "value.1", "Color arrives as int"),
    ],
)
def test_a_nested_value_json_would_change_is_named_by_its_path(
    app: App, value: Any, path: str, arrives: str
) -> None:
    """A message names the path that was wrong (SPEC 8): 'dict arrives as dict' did not."""
    with pytest.raises(InvalidInput) as raised:
        app.execute("anything", {"value": value})
    assert f"at {path}: {arrives}" in str(raised.value)
