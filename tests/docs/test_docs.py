"""Every code block in docs/ and README.md runs, so the docs cannot rot.

The convention, by the fenced block's info string:

* ``python`` — executed; the blocks of one page share one namespace, in order.
* ``python file=NAME.py`` — written to the page's working directory (importable
  by later blocks and by the page's worker), not executed.
* ``bash`` — run with ``bash -euo pipefail`` in that directory; must exit 0.
* ``bash worker`` — one ``graftq worker ...`` line, started in the background
  for the rest of the page (the runner waits until it is ready, stops it after).
* anything with ``not-run`` — shown, never run (``docker compose``, output
  samples). A block with no language or another language must say ``not-run``.

Each page gets its own working directory, a clean store (db 0 of the session's
redis-server) and a clean broker (db 4), through the GRAFTQ_* variables.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from graftq.devserver import RedisServer
from graftq.settings import Settings
from tests.processes import stop_session

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```(.*)$")


@dataclass
class Block:
    language: str
    flags: dict[str, str]
    code: str
    line: int

    @property
    def runs(self) -> bool:
        return "not-run" not in self.flags


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    n = 0
    while n < len(lines):
        opening = FENCE.match(lines[n])
        n += 1
        if not opening:
            continue
        words = opening[1].split()
        start = n
        while n < len(lines) and lines[n] != "```":
            n += 1
        assert n < len(lines), f"{page.name}:{start}: unclosed code block"
        flags = dict(word.partition("=")[::2] for word in words[1:])
        found.append(Block(words[0] if words else "", flags, "\n".join(lines[start:n]), start))
        n += 1
    return found


@contextlib.contextmanager
def background_worker(command: str, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while b" ready." not in _read(log):
                assert proc.poll() is None, f"worker exited: {_read(log).decode()[-3000:]}"
                assert time.monotonic() < deadline, "worker not ready in 60s"
                time.sleep(0.1)
            yield
        finally:
            stop_session(proc)
            print(f"--- worker log ---\n{_read(log).decode(errors='replace')[-4000:]}")


def _read(log: Any) -> bytes:
    log.seek(0)
    data: bytes = log.read()
    return data


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_code_block_runs(
    page: Path,
    redis_server: RedisServer,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = f"redis://127.0.0.1:{redis_server.port}/4"
    with redis.Redis.from_url(broker) as client:
        client.flushdb()  # no worker is connected between pages
    variables = {"GRAFTQ_REDIS_URL": redis_url, "GRAFTQ_BROKER_URL": broker,
                 "GRAFTQ_RESULT_BACKEND": broker}  # fmt: skip
    for name in [key for key in os.environ if key.startswith("GRAFTQ_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env.pop("COLUMNS", None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before, environment = set(sys.modules), dict(os.environ)
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    ran = 0
    try:
        with contextlib.ExitStack() as stack:
            for block in blocks(page):
                where = f"{page.name}:{block.line}"
                if not block.runs:
                    continue
                assert block.language in {"python", "bash"}, (
                    f"{where}: a {block.language or 'plain'} block must be marked not-run"
                )
                if "file" in block.flags:
                    (tmp_path / block.flags["file"]).write_text(block.code + "\n")
                elif block.language == "python":
                    exec(compile(block.code, where, "exec"), namespace)
                elif "worker" in block.flags:
                    stack.enter_context(background_worker(block.code.strip(), tmp_path, env))
                else:
                    proc = subprocess.run(
                        ["bash", "-euo", "pipefail", "-c", block.code],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                    )  # fmt: skip
                    print(f"--- {where} ---\n{proc.stdout}{proc.stderr}")
                    assert proc.returncode == 0, f"{where} failed:\n{proc.stdout}{proc.stderr}"
                ran += 1
    finally:
        os.environ.clear()  # a block may set variables (GRAFTQ_SIGNING_KEY): not for others
        os.environ.update(environment)
        for name in set(sys.modules) - before:  # the page's own modules
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(str(tmp_path)):
                del sys.modules[name]
    assert ran or page.name == "README.md", f"{page.name} has no code block that runs"


def test_the_configuration_page_names_every_setting_with_its_default() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        variable = f"GRAFTQ_{name.upper()}"
        rows = [line for line in page.splitlines() if line.startswith(f"| `{variable}`")]
        assert rows, f"docs/configuration.md has no table row for {variable}"
        default = field.default
        if default is not None:
            if isinstance(default, bool):
                shown = str(default).lower()  # as an environment variable writes it
            elif isinstance(default, float):
                shown = f"{default:g}"
            else:
                shown = str(default)
            assert f"`{shown}`" in rows[0], f"{variable}: default {shown} not in {rows[0]}"
