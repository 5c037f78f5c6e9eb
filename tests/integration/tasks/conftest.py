"""An App from `tests.apps.school` over the per-test clean database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from graftq import App, EntityRegistry


@pytest.fixture
def app(make_school: Callable[..., App]) -> App:
    return make_school()


@pytest.fixture
def store(app: App) -> EntityRegistry:
    return app.entities
