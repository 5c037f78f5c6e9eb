"""Apps from `tests.apps.school` and `tests.apps.faithful` over the per-test clean database."""

from __future__ import annotations

import pytest

from graftq import App, EntityRegistry
from tests.apps import faithful as faithful_app
from tests.apps.school import make_app


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    return make_app()


@pytest.fixture
def store(app: App) -> EntityRegistry:
    return app.entities


@pytest.fixture
def faithful(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    """The app of wide return annotations (and a signing key, so publishing is possible)."""
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    monkeypatch.setenv("GRAFTQ_SIGNING_KEY", "test-key")
    return faithful_app.make_app()
