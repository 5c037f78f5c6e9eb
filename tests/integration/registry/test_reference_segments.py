"""Index segments are ASCII digits only, written one way (issue 10 item 3: "²".isdigit() is
true; "01" would be a second spelling of "1", a second memo key of one input)."""

from __future__ import annotations

import pytest

from graftq import InvalidReference
from graftq.registry.store import EntityRegistry
from tests.apps.school import Student
from tests.integration.registry.models import Address, Loose


@pytest.mark.parametrize("segment", ["²", "٣", "-1", "0x1", " 1", "1_0", "9" * 5000, "01", "00"])
def test_a_non_ascii_digit_index_is_an_invalid_reference(reg: EntityRegistry, segment: str) -> None:
    ada = reg.put(Student(name="Ada", age=20, tags=["a", "b", "c", "d"]))
    with pytest.raises(InvalidReference, match="is not an index"):
        reg.resolve(f"@{ada.ecs_id}.tags.{segment}")


def test_an_ascii_index_still_works(reg: EntityRegistry) -> None:
    ada = reg.put(Student(name="Ada", age=20, tags=["a", "b", "c", "d"]))
    assert reg.resolve(f"@{ada.ecs_id}.tags.3") == "d"


def test_an_index_into_an_empty_list_says_the_list_is_empty(reg: EntityRegistry) -> None:
    ada = reg.put(Student(name="Ada", age=20))
    with pytest.raises(InvalidReference) as caught:
        reg.resolve(f"@{ada.ecs_id}.tags.0")
    assert "'0'" in str(caught.value) and "empty" in str(caught.value)
    assert "0..-1" not in str(caught.value)


def test_a_reference_reaches_the_extra_fields_of_a_model_that_allows_them(
    reg: EntityRegistry,
) -> None:
    """SPEC 4 navigates fields: an extra field (extra="allow") is one — stored, read back and
    versioned like the others (docs/versioning.md) — but a reference to it was refused with
    "Loose has no field 'rank'", the list of fields leaving it out."""
    loose = reg.put(Loose(name="Ada", rank=3, home=Address(city="Paris")))  # type: ignore[call-arg]

    assert reg.resolve(f"@{loose.ecs_id}.rank") == 3
    assert reg.resolve(f"@{loose.ecs_id}.home.city") == "Paris"
    with pytest.raises(InvalidReference) as caught:
        reg.resolve(f"@{loose.ecs_id}.rnak")
    assert "fields: name, rank, home, ecs_id" in str(caught.value)


def test_a_miss_lists_a_bounded_number_of_extra_fields(reg: EntityRegistry) -> None:
    wide = reg.put(Loose(name="w", **{f"x{i}": i for i in range(5000)}))

    with pytest.raises(InvalidReference) as caught:
        reg.resolve(f"@{wide.ecs_id}.nope")
    assert "x0, x1" in str(caught.value) and len(str(caught.value)) < 1_000
