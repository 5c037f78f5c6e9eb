"""Typed JSON (`graftq.tasks.encoding`): what it carries, what it refuses, what it still reads."""

from __future__ import annotations

import dataclasses
import fractions
import ipaddress
from typing import Any

import pytest

from graftq.tasks import encoding


@dataclasses.dataclass(frozen=True)
class Span:
    start: int
    end: fractions.Fraction


@pytest.mark.parametrize(
    "value",
    [
        Span(1, fractions.Fraction(1, 3)),
        ipaddress.ip_network("10.0.0.0/8"),
        complex(0, -2),
        {"nested": [(Span(0, fractions.Fraction(2)),)]},
    ],
    ids=["dataclass", "network", "complex", "nested"],
)
def test_values_pydantic_knows_round_trip_through_records(value: Any) -> None:
    back = encoding.loads(encoding.dumps(value))

    assert back == value and type(back) is type(value)


def test_a_class_made_in_a_function_has_no_record_form_but_crosses_the_fork() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(encoding.EncodingError, match="Local"):
        encoding.dumps(Local(1))
    assert encoding.loads(encoding.dumps(Local(1), pickles=True), pickles=True).x == 1


def test_records_of_the_repr_era_still_read_back() -> None:
    assert encoding.decode({encoding.TAG: "repr", "v": "Span(start=1)"}) == "Span(start=1)"


def test_a_container_inside_itself_is_refused_not_a_recursion_error() -> None:
    inner: dict[str, Any] = {}
    value = [(inner,)]
    inner["back"] = value

    with pytest.raises(
        encoding.EncodingError, match=r"list contains itself.*\[\(\{'back': \[\.\.\.\]\},\)\]"
    ):
        encoding.dumps(value)
