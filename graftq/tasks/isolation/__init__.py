"""Running one call in a throw-away process: a fork of the caller, or a child of a fork server.

`fork.run_isolated` forks the calling process (`app.execute`, and workers without a
zygote); `zygote.Zygote` is a worker pool process's lean fork server, whose children are
forked ahead of demand. What every such child does — die with its parent, reap and kill
what it started, send one frame — is `process`; what a body logs and prints on its way
back to the caller is `output`; how a zygote forks without `os.fork`'s work for other
threads is `rawfork`.
"""

from graftq.tasks.isolation.fork import run_isolated
from graftq.tasks.isolation.zygote import Zygote

__all__ = ["Zygote", "run_isolated"]
