"""Forking a fork server without the after-fork work one thread makes moot (`rawfork`).

Each case runs in a fresh interpreter that starts with `rawfork.RECORD`, as a zygote
does, forks once with `Forker` and reports what parent and child saw. Whether
`threading`'s own hook ran shows in its lock: that hook replaces
``threading._active_limbo_lock`` with a new one, so an unchanged lock means it was
skipped (a lock, once replaced, cannot come back at the same address: the new one is
made while the old one lives).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from graftq.tasks.isolation import rawfork

FORK_ONCE = """
import json, os, random, threading
from graftq.tasks.isolation.rawfork import Forker

seen = []
os.register_at_fork(
    before=lambda: seen.append("before"),
    after_in_child=lambda: seen.append("child"),
    after_in_parent=lambda: seen.append("parent"),
)
{setup}
lock = id(threading._active_limbo_lock)
forker = Forker({hooks})
read, write = os.pipe()
pid = forker.fork()
if pid == 0:
    child = {{
        "seen": seen,
        "lock_kept": id(threading._active_limbo_lock) == lock,
        "random": random.random(),
        "main_thread": threading.current_thread() is threading.main_thread(),
    }}
    worker = threading.Thread(target=lambda: child.update(thread_ran=True))
    worker.start()  # threads still work in the child
    worker.join(10)
    os.write(write, json.dumps(child).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 1 << 16))
os.waitpid(pid, 0)
print(json.dumps({{"child": child, "parent": seen, "random": random.random()}}))
"""


def fork_once(setup: str = "", hooks: str = "hooks") -> tuple[dict[str, Any], str]:
    """What parent and child saw of one `Forker.fork`, and what was written to stderr."""
    code = rawfork.RECORD + FORK_ONCE.format(setup=textwrap.dedent(setup), hooks=hooks)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report, done.stderr


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the libc path is for CPython 3.11")
def test_one_thread_forks_without_threadings_work_and_keeps_every_other_hook() -> None:
    report, _ = fork_once()
    child = report["child"]
    assert child["lock_kept"], "threading's after-fork hook ran: the child was forked by os.fork"
    assert child["seen"] == ["before", "child"]  # each hook once, in its own process
    assert report["parent"] == ["before", "parent"]
    assert child["random"] != report["random"]  # random's own hook reseeded the child
    assert child["main_thread"] and child["thread_ran"]


def test_with_another_thread_alive_it_is_os_fork() -> None:
    setup = """
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    """
    report, _ = fork_once(setup)
    assert not report["child"]["lock_kept"]  # threading re-made its lock: os.fork ran
    assert report["child"]["seen"] == ["before", "child"]  # and the hooks ran once, not twice
    assert report["parent"] == ["before", "parent"]
    assert report["child"]["random"] != report["random"]


def test_hooks_not_recorded_mean_os_fork() -> None:
    report, _ = fork_once(hooks="None")
    assert not report["child"]["lock_kept"]
    assert report["child"]["seen"] == ["before", "child"]


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the libc path is for CPython 3.11")
def test_a_failing_hook_is_reported_and_the_others_still_run() -> None:
    setup = """
        def broken():
            raise RuntimeError("hook broke")
        os.register_at_fork(after_in_child=broken)
        os.register_at_fork(after_in_child=lambda: seen.append("after the broken one"))
    """
    report, stderr = fork_once(setup)
    assert report["child"]["lock_kept"]
    assert report["child"]["seen"] == ["before", "child", "after the broken one"]
    assert "Exception ignored in at-fork hook" in stderr and "hook broke" in stderr
