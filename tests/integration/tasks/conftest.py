"""Apps from `tests.apps.school` and `tests.apps.faithful` over the per-test clean database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from graftq import App, EntityRegistry
from tests.apps import faithful as faithful_app


@pytest.fixture
def app(make_school: Callable[..., App]) -> App:
    return make_school()


@pytest.fixture
def store(app: App) -> EntityRegistry:
    return app.entities


@pytest.fixture
def faithful(make_school: Callable[..., App]) -> App:
    """The app of wide return annotations (and a signing key, so publishing is possible)."""
    return make_school(signing_key="test-key", make=faithful_app.make_app)
