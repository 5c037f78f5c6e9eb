"""A pool process killed outright leaves no process behind (SPEC 6: no orphan survives).

The zygote dies with its pool process; before it goes it kills its call's whole tree, a
process the body detached with setsid and a double fork included (one the call's child,
a subreaper, had adopted). A kill -9 of a worker, or the OOM killer, does this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.processes import identify, kill, lives, wait_until

ROOT = Path(__file__).resolve().parents[3]
POOL_PROCESS = """
import sys
from graftq.tasks.isolation.zygote import Zygote
from tests.apps.hostile import app
zygote = Zygote("tests.apps.hostile:app")
print(zygote.pid, flush=True)
info = app.callables["orphan_and_wait"]
zygote.run(info.name, info.version, {"pid_file": sys.argv[1]}, time_limit=None)
"""


def test_a_killed_pool_process_leaves_no_orphan_of_its_call(tmp_path: Path, redis_url: str) -> None:
    pid_file = tmp_path / "orphan.pid"
    env = {**os.environ, "GRAFTQ_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    pool = subprocess.Popen(
        [sys.executable, "-c", POOL_PROCESS, str(pid_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    left = []
    try:
        assert pool.stdout is not None
        zygote = identify(int(pool.stdout.readline()))
        wait_until(pid_file.exists, 60, "the body left its orphan")
        orphan = identify(int(pid_file.read_text()))
        assert zygote is not None and orphan is not None
        left = [zygote, orphan]
        assert lives(orphan)

        pool.send_signal(signal.SIGKILL)
        pool.wait(timeout=10)

        wait_until(lambda: not lives(orphan), 10, f"the call's orphan {orphan.pid} was killed")
        wait_until(lambda: not lives(zygote), 10, f"the zygote {zygote.pid} ended")
    finally:
        if pool.poll() is None:
            pool.kill()
            pool.wait()
        if pool.stdout is not None:
            pool.stdout.close()
        for proc in left:
            kill(proc)
