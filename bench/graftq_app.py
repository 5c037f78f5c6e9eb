"""The graftq side of bench/throughput.py: one `increment(counter: Counter) -> Counter`.

Store, broker and results on GRAFTQ_REDIS_URL. Workers load it with
``graftq worker --app bench.graftq_app:app -c 2``.
"""

from __future__ import annotations

from typing import ClassVar

from bench._rtt import install_from_env
from graftq import App, Entity


class Counter(Entity):
    graftq_type: ClassVar[str] = "bench.throughput.Counter"
    value: int = 0


app = App("bench")


@app.register
def increment(counter: Counter) -> Counter:
    counter.value += 1
    return counter


install_from_env()
