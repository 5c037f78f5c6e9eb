"""Forking a single-threaded fork server without the work `os.fork` does for threads.

`os.fork` runs CPython's after-fork code in the child, then every hook that modules gave
`os.register_at_fork`; those of `threading` and `logging` re-create locks in case another
thread held one when the process forked. A zygote has one thread, so none can be held,
yet each of its children paid for it: ≈ 220 first writes to pages it shares with the
zygote (each a page copy) and ≈ 0.4 ms of CPU per call (bench/RESULTS.md, issue 9).

`Forker.fork` calls libc's ``fork`` itself and runs the hooks by hand, in CPython's order
(``before`` last registered first, the others first registered first): every hook the
process registered since its first line (`RECORD`, the zygote's entry, records them), but
those of `threading` and `logging` — their work is moot with one thread. It uses
`os.fork` instead whenever that reasoning does not hold: hooks not recorded, more than one
thread, or an interpreter other than CPython 3.11 (whose after-fork code re-creates the
GIL and the import lock, drops the states of other threads and clears pending signals:
all moot when one thread forks through libc with the GIL held and no import running).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
import traceback
from collections.abc import Callable

Hook = Callable[[], object]
Phases = dict[str, Hook]  # os.register_at_fork's keywords: before, after_in_child, after_in_parent

# The start of a process whose hooks `Forker` runs, before anything registers one (one
# line, so the command line stays one line in ps and profilers): `hooks` collects each
# registration, in order, and the registration still happens.
RECORD = (
    "import os; hooks = []; register = os.register_at_fork; "
    "os.register_at_fork = lambda **phases: (register(**phases), hooks.append(phases)) and None; "
)

# Whose locks only matter when another thread may hold them (module, qualified name).
_THREAD_ONLY = frozenset(
    {
        ("threading", "_after_fork"),
        ("logging", "_acquireLock"),
        ("logging", "_releaseLock"),
        ("logging", "_after_at_fork_child_reinit_locks"),
    }
)


def _needed(hook: Hook) -> bool:
    name = (getattr(hook, "__module__", None), getattr(hook, "__qualname__", None))
    return name not in _THREAD_ONLY


class Forker:
    """Forks this process, skipping the after-fork work one thread makes moot.

    Made once the process has imported what it will fork with: it takes the hooks
    recorded so far.
    """

    def __init__(self, hooks: list[Phases] | None) -> None:
        self._libc_fork: Callable[[], int] | None = None
        if hooks is not None and _verified_interpreter():
            # PyDLL: the call keeps the GIL, so the thread that forks goes on in the child
            self._libc_fork = ctypes.PyDLL(None, use_errno=True).fork
        needed: dict[str, list[Hook]] = {"before": [], "after_in_child": [], "after_in_parent": []}
        for phases in hooks or []:
            for phase, hook in phases.items():
                if hook is not None and _needed(hook):
                    needed[phase].append(hook)
        self._before = needed["before"][::-1]
        self._in_child = needed["after_in_child"]
        self._in_parent = needed["after_in_parent"]

    def fork(self) -> int:
        """`os.fork`'s contract: 0 in the child, the child's pid in the parent."""
        if self._libc_fork is None or threading.active_count() != 1:
            return os.fork()
        _run(self._before)
        pid = self._libc_fork()
        if pid < 0:
            error = ctypes.get_errno()
            _run(self._in_parent)
            raise OSError(error, os.strerror(error))
        _run(self._in_child if pid == 0 else self._in_parent)
        return pid


def _run(hooks: list[Hook]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception as error:  # as CPython does: report it and go on
            print(f"Exception ignored in at-fork hook {hook!r}:", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)


def _verified_interpreter() -> bool:
    return platform.python_implementation() == "CPython" and sys.version_info[:2] == (3, 11)
