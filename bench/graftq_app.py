"""The graftq side of bench/throughput.py: `increment(counter: Counter) -> Counter`, twice.

``increment`` runs isolated (a fork per call, the default); ``increment_inline`` is the
same function registered with ``isolation="none"``. Store, broker and results on
GRAFTQ_REDIS_URL. Workers load it with ``graftq worker --app bench.graftq_app:app -c 2``.
"""

from __future__ import annotations

from typing import ClassVar

from bench import _rtt, _timing
from graftq import App, Entity


class Counter(Entity):
    graftq_type: ClassVar[str] = "bench.throughput.Counter"
    value: int = 0


app = App("bench")


@app.register
def increment(counter: Counter) -> Counter:
    counter.value += 1
    return counter


@app.register(name="increment_inline", isolation="none")
def increment_inline(counter: Counter) -> Counter:
    counter.value += 1
    return counter


_rtt.install_from_env()
_timing.install_from_env(graftq=True)
