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

DEMO_TIMEOUT = 60.0

Proc = tuple[int, str]  # (pid, start time): a PID that was not reused


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _descendants(root: int) -> set[Proc]:
    children: dict[int, list[tuple[int, str]]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append((pid, stat[2]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def _alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1] and stat[1] != "Z"


def _mentioning(port: int) -> list[int]:
    """Live processes (not zombies) whose cmdline or environment names 127.0.0.1:port."""
    needle = f"127.0.0.1:{port}".encode()
    hits = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            base = Path(f"/proc/{pid}")
            stat = _stat(pid)
            if stat is None or stat[1] == "Z":
                continue
            cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = b""
            with contextlib.suppress(OSError):
                environ = (base / "environ").read_bytes()
            if needle in cmdline or needle in environ or f"--port {port}".encode() in cmdline:
                hits.append(pid)
    return hits


def run_demo(env: dict[str, str]) -> tuple[int, str, set[Proc]]:
    """Run `graftq demo`, watching every process it starts; (exit code, output, processes)."""
    seen: set[Proc] = set()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graftq.cli", "demo"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + DEMO_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                seen |= _descendants(proc.pid)
                time.sleep(0.05)
            assert proc.poll() is not None, f"graftq demo still running after {DEMO_TIMEOUT}s"
            code = proc.returncode
        finally:
            if proc.poll() is None:  # only on failure: stop what we started, by PID
                for pid, _ in seen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.seek(0)
        text = log.read().decode(errors="replace")
    return code, text, seen


def _gone(processes: set[Proc], port: int, timeout: float = 5.0) -> tuple[set[Proc], list[int]]:
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in processes if _alive(p)}
        named = _mentioning(port)
        if (not left and not named) or time.monotonic() > deadline:
            return left, named
        time.sleep(0.1)


def test_demo_without_redis_starts_and_stops_a_private_one() -> None:
    port = free_port()
    env = clean_env(GRAFTQ_REDIS_URL=f"redis://127.0.0.1:{port}/0")
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
    left = {p for p in seen if _alive(p)}
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {p for p in left if _alive(p)}
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
