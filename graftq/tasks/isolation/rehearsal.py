"""A spare child's rehearsal: the request and result path run once on sample data.

A zygote's child shares every page with the zygote until it writes to it, and its first
write to each is a page copy: ≈ 370 of them for one call here, at a few µs each on a VM,
most of them on the way in (unpickling the arguments) and out (encoding the result) —
the reference counts, caches and code of pickle, pydantic and `encoding`. A spare child
has time before its request arrives (it was forked while the previous call committed),
so it runs that path once on a sample request first (`rehearse`): the call then finds
those pages already its own. bench/RESULTS.md (issue 9): the call's own copies 370 → 90,
its CPU ≈ 1 → 0.3 ms, for ≈ 0.1 ms more CPU in all.

Only graftq's own code runs: the sample is a model of this module's, never a class or
function of the App's.
"""

from __future__ import annotations

import datetime as dt
import pickle
import uuid
from typing import Any

from pydantic import BaseModel

from graftq.tasks import encoding
from graftq.tasks.isolation import process


class Sample(BaseModel):
    """The field types an entity has, and a few a callable's arguments often have."""

    id: uuid.UUID
    at: dt.datetime
    count: int = 0
    name: str | None = None
    tags: list[str] = []


def arguments() -> dict[str, Any]:
    """Sample arguments, for the zygote to make into a request as P makes a real one."""
    return {"sample": Sample(id=uuid.uuid4(), at=dt.datetime.now(dt.UTC), tags=["a"])}


def rehearse(raw: bytes) -> bytes:
    """Unpickle the request `raw`, encode its arguments back and flush, as a call does;
    the frame that would be sent. (A call's end also sweeps its processes: the spare
    rehearses that itself, as nothing else may — `process.sweep` kills every descendant
    of the process that calls it.)"""

    kind, payload = process.run_framed(
        lambda: pickle.loads(raw)[1], lambda value: encoding.dumps(value, pickles=True), None
    )
    process.flush_std()
    return process.HEADER.pack(kind, len(payload)) + payload
