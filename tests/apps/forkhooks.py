"""An App whose module registers an at-fork hook and draws random numbers.

What a body forked by a zygote must still get, however the zygote forks: the hooks
its module registered, run once in each child, and a freshly seeded `random`
(`tests/integration/tasks/test_zygote.py`).
"""

from __future__ import annotations

import os
import random

from graftq import App

app = App("forkhooks")

_hook_runs = 0


def _count_fork() -> None:
    global _hook_runs
    _hook_runs += 1


os.register_at_fork(after_in_child=_count_fork)


@app.register
def fork_state() -> dict[str, float]:
    """How often this process's at-fork hook ran, and its next random number."""
    return {"hook_runs": _hook_runs, "random": random.random()}
