"""Index segments are ASCII digits only, written one way (issue 10 item 3: "²".isdigit() is
true; "01" would be a second spelling of "1", a second memo key of one input)."""

from __future__ import annotations

import pytest

from graftq import InvalidReference
from graftq.registry.store import EntityRegistry
from tests.apps.school import Student


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
