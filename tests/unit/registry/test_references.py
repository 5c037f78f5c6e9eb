"""Property tests for the reference parser `graftq.registry.references.parse` (SPEC 4)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from graftq.errors import InvalidReference
from graftq.registry.references import Reference, navigate, parse

# No example database: it would write a .hypothesis directory into the working tree.
PROFILE = settings(database=None, max_examples=200, deadline=None)

uuids = st.uuids().map(str)
# A path segment: anything without a '.', not starting with '_'.
segments = st.text(min_size=1, max_size=12).filter(lambda s: "." not in s and not s.startswith("_"))
paths = st.lists(segments, max_size=6)
private = st.text(max_size=8).filter(lambda s: "." not in s).map(lambda s: "_" + s)


@PROFILE
@given(st.text())
@example("@")
@example("@@")
@example("@.")
@example("@" + str(uuid.UUID(int=0)) + ".")
@example("@" + str(uuid.UUID(int=0)) + "..a")
def test_any_string_parses_or_is_an_invalid_reference(text: str) -> None:
    try:
        parsed = parse(text)
    except InvalidReference as exc:
        assert text.startswith("@") and not text.startswith("@@")
        assert repr(text) in str(exc)
        return
    if not text.startswith("@"):
        assert parsed == text
    elif text.startswith("@@"):
        assert parsed == text[1:]
    else:
        assert isinstance(parsed, Reference)


@PROFILE
@given(st.text().map(lambda s: "@" + s))
def test_any_at_string_parses_or_is_an_invalid_reference(text: str) -> None:
    try:
        parsed = parse(text)
    except InvalidReference:
        return
    assert isinstance(parsed, Reference | str)


@PROFILE
@given(st.text())
def test_double_at_is_the_literal(text: str) -> None:
    assert parse("@@" + text) == "@" + text


@PROFILE
@given(uuids, paths, st.booleans())
def test_valid_reference_round_trips(uid: str, path: list[str], upper: bool) -> None:
    text = "@" + ".".join([uid.upper() if upper else uid, *path])

    parsed = parse(text)

    assert isinstance(parsed, Reference)
    assert (parsed.uuid, parsed.path) == (uid, tuple(path))
    assert parsed.text == text
    assert parse(parsed.pinned(uid)) == Reference(parsed.pinned(uid), uid, tuple(path))


@PROFILE
@given(uuids, paths, private, paths)
def test_a_private_segment_anywhere_is_refused(
    uid: str, before: list[str], bad: str, after: list[str]
) -> None:
    text = "@" + ".".join([uid, *before, bad, *after])

    with pytest.raises(InvalidReference) as caught:
        parse(text)

    assert repr(bad) in str(caught.value)


@PROFILE
@given(uuids, paths, paths)
def test_an_empty_segment_is_refused(uid: str, before: list[str], after: list[str]) -> None:
    with pytest.raises(InvalidReference):
        parse("@" + ".".join([uid, *before, "", *after]))


@PROFILE
@given(st.text().filter(lambda s: not s.startswith("@")))
def test_strings_without_at_are_left_alone(text: str) -> None:
    assert parse(text) == text


def test_messages_stay_short_however_long_the_reference() -> None:
    """A message is stored in the Execution record and Celery's result: a megabyte of
    reference must not make megabytes of error (each long part is cut, its length said)."""
    target = str(uuid.UUID(int=0))
    long = "k" * 1_000_000
    for text in (f"@{target}._{long}", f"@{long}", f"@{target}.{long}..x"):
        with pytest.raises(InvalidReference) as caught:
            parse(text)
        assert len(str(caught.value)) < 600 and "characters" in str(caught.value)
    wide = {f"key{i}": i for i in range(100_000)}
    for value in (wide, [0], Reference, "text"):
        with pytest.raises(InvalidReference) as caught:
            navigate(value, Reference(f"@{target}.{long}", target, (long,)))
        assert len(str(caught.value)) < 1_000
