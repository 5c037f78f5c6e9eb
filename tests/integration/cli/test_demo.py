"""`graftq demo` end to end: with no Redis it brings its own, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from graftq.devserver import free_port
from tests.integration.cli.conftest import clean_env
from tests.processes import Proc, all_pids, descendants, kill, lives, read_stat

DEMO_TIMEOUT = 90.0  # seconds; generous for a loaded machine, inside pytest's 120 s


def _mentioning(port: int) -> list[int]:
    """Live processes (not zombies) whose cmdline or environment names 127.0.0.1:port."""
    needle = f"127.0.0.1:{port}".encode()
    hits = []
    for pid in all_pids():
        found = read_stat(pid)
        if pid == os.getpid() or found is None or found.state == "Z":
            continue
        with contextlib.suppress(OSError):
            base = Path(f"/proc/{pid}")
            cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = b""
            with contextlib.suppress(OSError):
                environ = (base / "environ").read_bytes()
            if needle in cmdline or needle in environ or f"--port {port}".encode() in cmdline:
                hits.append(pid)
    return hits


def run_demo(env: dict[str, str]) -> tuple[int, str, set[Proc]]:
    """Run `graftq demo`, watching every process it starts; (exit code, output, processes).

    On failure it stops what it started: each watched process by pid and start time
    (never a newcomer that took a pid), and the demo's own session's process group.
    """
    seen: set[Proc] = set()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graftq.cli", "demo"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + DEMO_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                seen |= descendants(proc.pid)
                time.sleep(0.05)
            assert proc.poll() is not None, f"graftq demo still running after {DEMO_TIMEOUT}s"
            code = proc.returncode
        finally:
            if proc.poll() is None:  # still unreaped, so its pid is still its group's id
                for started in seen:
                    kill(started)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.seek(0)
        text = log.read().decode(errors="replace")
    return code, text, seen


def _gone(
    processes: set[Proc], port: int | None = None, timeout: float = 30.0
) -> tuple[set[Proc], list[int]]:
    """What still runs of `processes`, and what names `port`, once both are gone or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in processes if lives(p)}
        named = [] if port is None else _mentioning(port)
        if (not left and not named) or time.monotonic() > deadline:
            return left, named
        time.sleep(0.1)


def test_demo_without_redis_starts_and_stops_a_private_one() -> None:
    port = free_port()
    nowhere = f"redis://127.0.0.1:{port}/0"  # store, broker and results all unreachable
    env = clean_env(
        GRAFTQ_REDIS_URL=nowhere, GRAFTQ_BROKER_URL=nowhere, GRAFTQ_RESULT_BACKEND=nowhere
    )
    code, text, seen = run_demo(env)
    assert code == 0, text
    assert "started a private" in text
    assert "stopped the private Redis" in text
    assert "graph TD" in text
    assert "Traceback" not in text
    assert "(head)" in text and "-->|birthday|" in text and "-->|move|" in text
    # it did start a redis-server and a worker with its pool while running ...
    assert len(seen) >= 3, seen
    # ... and none of them, nor anything else on the private Redis, survives it
    left, named = _gone(seen, port)
    assert not left, f"processes left behind by graftq demo: {left}"
    private = text.split("started a private one at ", 1)[1].split()[0]
    private_port = int(private.rsplit(":", 1)[1].split("/")[0])
    left, named = _gone(set(), private_port)
    assert not named, f"processes still using the private Redis: {named}"


def test_demo_uses_a_reachable_redis(redis_url: str, redis_client: redis.Redis) -> None:
    env = clean_env(GRAFTQ_REDIS_URL=redis_url)
    code, text, seen = run_demo(env)
    assert code == 0, text
    assert "started a private" not in text
    assert "graph TD" in text
    assert_shows_the_whole_idea(text)
    keys = list(redis_client.scan_iter(match="graftq-demo:*", count=1000))
    assert keys, "the demo wrote nothing to the reachable Redis"
    assert any(key.startswith("graftq-demo:v:") for key in keys)
    assert any(key.startswith("graftq-demo:hist:") for key in keys)
    # it never touches the default prefix of other apps
    assert not list(redis_client.scan_iter(match="graftq:*", count=1000))
    left, _ = _gone(seen)
    assert not left, f"processes left behind by graftq demo: {left}"


def assert_shows_the_whole_idea(text: str) -> None:
    """Each part of the demo printed what it is there to show."""
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    head = re.search(rf"birthday\(@<lineage>\) -> age 21: new version ({uuid})", text)
    assert head, text
    assert re.search(
        rf"birthday\(@<first version>\) -> a branch {uuid}; the head stays {head[1]}", text
    )
    assert re.search(rf"address ({uuid}) -> (?!\1){uuid} \(city Lyon\)", text)  # nested edit
    assert re.search(rf"student {head[1]} -> {uuid} \(parent {head[1]}\)", text)  # its ancestor
    assert "transform_student -> GraduateStudent lineage" in text
    assert re.search(rf"execution {uuid}: status FAILURE, error 'ValueError: Ada cannot be", text)
    assert "counter value 20: a chain of 21 versions" in text
    assert "20 increment jobs: all done" in text
    assert "graftq.demo.Student" in text and "derived_from" in text  # the ls table
    assert "-->|move|" in text and "(head)" in text
