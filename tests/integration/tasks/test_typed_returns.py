"""Values of types pydantic knows come back as themselves (SPEC section 5, "What comes back").

A dataclass, an `IPv4Address`, a `complex`, a `deque` — at the top, in containers or
as a plain model's field — come back of the same classes with the same values, from
`execute` (fork and inline) and from the execution record `Job.get` replays. A value
that nothing can carry is a `ReturnTypeError` with nothing committed, never a repr;
so is a container that holds itself (SPEC section 2: no cycles), never a RecursionError.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis
from pydantic import BaseModel

from graftq import App, EntityRegistry, Execution, ReturnTypeError
from graftq.tasks import results
from tests.apps.school import Address
from tests.redis_state import exec_keys, only_a_failure_record, snapshot

ISOLATIONS = ["fork", "none"]


@dataclasses.dataclass
class Point:
    x: int


@dataclasses.dataclass
class Loose:
    """Its `Any` field holds what pydantic would turn into plain JSON data."""

    value: Any


@dataclasses.dataclass
class Holder:
    """An entity inside a dataclass, where graftq does not look for entities."""

    address: Address


class Opaque:
    """A class pydantic has no schema for."""


class Shape(BaseModel):
    corner: Point
    extras: dict[str, Any] = {}


def deep_types(value: Any) -> Any:
    """The value's classes at every depth, to compare two results exactly."""
    if isinstance(value, dict):
        return (dict, {key: deep_types(item) for key, item in value.items()})
    if isinstance(value, list | tuple | collections.deque):
        return (type(value), [deep_types(item) for item in value])
    if isinstance(value, BaseModel):
        return (type(value), {name: deep_types(item) for name, item in value.__dict__.items()})
    if dataclasses.is_dataclass(value):
        return (type(value), deep_types(dataclasses.asdict(value)))  # type: ignore[arg-type]
    return type(value)


def recorded(store: EntityRegistry) -> Execution:
    """The one execution record of the test's database."""
    (key,) = exec_keys(store.client.scan_iter("graftq:exec:*", count=1000))
    execution = store.execution(str(key).rsplit(":", 1)[1])
    assert execution is not None
    return execution


def register_returning(app: App, value: Any, annotation: Any, isolation: str) -> str:
    def give(n: int) -> Any:
        return value

    give.__annotations__ = {"n": int, "return": annotation}
    app.register(give, name="give", isolation=isolation)
    return "give"


CASES: dict[str, tuple[Any, Any]] = {
    "dataclass": (Point(1), Point),
    "ip": (ipaddress.IPv4Address(1), ipaddress.IPv4Address),
    "complex": (complex(1, 1), complex),
    "deque": (collections.deque([1, 2]), collections.deque[int]),
    "list-of-complex": ([complex(2, 1)], list[complex]),
    "in-any": (
        {"p": [Point(2)], "ip": (ipaddress.IPv4Address(2),), "q": collections.deque(["a"])},
        Any,
    ),
    "model-field": (Shape(corner=Point(3), extras={"c": complex(0, 3)}), Shape),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_typed_values_come_back_as_themselves(
    app: App, store: EntityRegistry, case: str, isolation: str
) -> None:
    value, annotation = CASES[case]
    name = register_returning(app, value, annotation, isolation)

    result = app.execute(name, {"n": 1})

    assert result == value and deep_types(result) == deep_types(value)
    execution = recorded(store)
    assert execution.status == "SUCCESS"
    replayed = results.replay(store, execution.result, execution.outputs)  # as Job.get does
    assert replayed == value and deep_types(replayed) == deep_types(value)


UNCARRIED: dict[str, tuple[Any, str]] = {
    "no-schema": (Opaque(), "Opaque"),
    "not-faithful": (Loose(value=(1, 2)), "Loose"),
    "entity-inside": (Holder(address=Address(city="Oslo")), "Holder"),
    # nor can pickle carry these across the fork: the same error all the same
    "generator": ((n for n in range(2)), "generator"),
    "lock": (threading.Lock(), "lock"),
    # a str is JSON, but not one holding a lone surrogate: this was pydantic's
    # serialization error, raised from writing the record, not a ReturnTypeError
    "lone-surrogate": ("caf\ud800", "lone surrogate"),
    "lone-surrogate-key": ({"caf\udc80": 1}, "lone surrogate"),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("case", sorted(UNCARRIED))
def test_a_value_nothing_can_carry_is_a_return_type_error_committing_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis, case: str, isolation: str
) -> None:
    value, shown = UNCARRIED[case]
    name = register_returning(app, [value], list[Any], isolation)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError) as caught:
        app.execute(name, {"n": 1})

    assert shown in str(caught.value) and name in str(caught.value)
    only_a_failure_record(redis_client, before, "ReturnTypeError")


def list_inside_itself() -> Any:
    items: list[Any] = [1]
    items.append(items)
    return items


def dict_inside_itself_through_a_model() -> Any:
    shape = Shape(corner=Point(0))
    loop = [shape]
    shape.extras["loop"] = loop
    return {"shapes": loop}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("make", [list_inside_itself, dict_inside_itself_through_a_model])
def test_a_container_inside_itself_is_a_return_type_error_committing_nothing(
    app: App, redis_client: redis.Redis, make: Any, isolation: str
) -> None:
    name = register_returning(app, make(), Any, isolation)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError, match="contains itself"):
        app.execute(name, {"n": 1})

    only_a_failure_record(redis_client, before, "ReturnTypeError")


def nested(depth: int, wrap: Callable[[Any], Any]) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = wrap(value)
    return value


WRAPS: dict[str, Callable[[Any], Any]] = {
    "list": lambda v: [v],
    "tuple": lambda v: (v,),
    "model": lambda v: Shape(corner=Point(0), extras={"v": v}),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("kind", sorted(WRAPS))
def test_a_value_nested_too_deep_to_record_is_a_return_type_error(
    app: App, store: EntityRegistry, redis_client: redis.Redis, kind: str, isolation: str
) -> None:
    """Its record could not be read back (pydantic's JSON parser stops at 200 levels): a
    list 230 deep crossed no fork (ValueError), came back inline, and was then recorded
    where no Job.get could read it; 300 deep was a RecursionError."""
    for depth in (230, 300, 1000):
        name = register_returning(app, nested(depth, WRAPS[kind]), Any, isolation)
        before = snapshot(redis_client)

        with pytest.raises(ReturnTypeError, match="deep"):
            app.execute(name, {"n": 1})

        only_a_failure_record(redis_client, before, "ReturnTypeError")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_value_nested_as_deep_as_can_be_recorded_comes_back(
    app: App, store: EntityRegistry, isolation: str
) -> None:
    value = nested(40, WRAPS["model"])  # 4 levels of JSON each
    name = register_returning(app, value, Any, isolation)

    assert app.execute(name, {"n": 1}) == value
    execution = recorded(store)
    assert results.replay(store, execution.result, execution.outputs) == value


SCRIPT = """
import dataclasses
from graftq import App

@dataclasses.dataclass
class Point:
    x: int

app = App("script")

@app.register
def mk(n: int) -> Point:
    return Point(n)

result = app.execute("mk", {"n": 1})
print(type(result) is Point, result)
"""


def test_a_class_of_the_scripts_main_module_comes_back_as_that_class(
    redis_url: str, tmp_path: Path
) -> None:
    """Not a by-value copy of the class (cloudpickle's way with `__main__`), which the
    annotation `-> Point` would refuse."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)

    done = subprocess.run(
        [sys.executable, str(script)],
        env={"GRAFTQ_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True Point(x=1)"


CONVERTED: dict[str, tuple[Any, Any, str]] = {
    "entity-as-dict": ({"city": "Oslo"}, Address, "the top"),
    "model-in-dict": ({"a": {"city": "Oslo"}}, dict[str, Address], "a"),
    "model-in-list": ([Address(city="Oslo"), {"city": "Rome"}], list[Address], "1"),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_a_dict_the_annotation_would_make_a_model_of_is_a_return_type_error(
    app: App, redis_client: redis.Redis, case: str, isolation: str
) -> None:
    """The annotation checks, it does not convert: a dict returned for `-> Address` came
    back a dict, and no Address was committed — neither the value nor a refusal."""
    value, annotation, where = CONVERTED[case]
    name = register_returning(app, value, annotation, isolation)
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError) as caught:
        app.execute(name, {"n": 1})

    assert f"a dict at {where}" in str(caught.value)
    only_a_failure_record(redis_client, before, "ReturnTypeError")


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("annotation", [Address, list[Address]])
def test_an_entity_returned_with_an_invalid_field_is_a_return_type_error(
    app: App, redis_client: redis.Redis, annotation: Any, isolation: str
) -> None:
    """An entity with a value assigned past validation passes the annotation's check (an
    instance is not validated again) and the store refuses it at the commit (SPEC section
    3: pydantic's ValidationError): the error is both, and names the callable and the field."""
    broken = Address(city="Oslo")
    broken.city = 7  # type: ignore[assignment]  # attribute assignment is not validated
    name = register_returning(
        app, broken if annotation is Address else [broken], annotation, isolation
    )
    before = snapshot(redis_client)

    with pytest.raises(ReturnTypeError) as caught:
        app.execute(name, {"n": 1})

    assert isinstance(caught.value, pydantic.ValidationError)
    assert [error["loc"] for error in caught.value.errors()] == [("city",)]
    assert "callable 'give' returned an Address" in str(caught.value)
    only_a_failure_record(redis_client, before, "InvalidResult")
