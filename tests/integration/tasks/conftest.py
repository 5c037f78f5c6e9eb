"""An App from `tests.apps.school` over the per-test clean database."""

from __future__ import annotations

import pytest

from graftq import App, EntityRegistry
from tests.apps.school import make_app


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("GRAFTQ_REDIS_URL", redis_url)
    return make_app()


@pytest.fixture
def store(app: App) -> EntityRegistry:
    return app.entities
