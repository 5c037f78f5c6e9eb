"""A FastAPI app that submits graftq jobs without blocking its event loop.

Run it next to a worker (from the repository root)::

    graftq worker --app examples.webapp.jobs:app
    uvicorn examples.webapp.main:api

``POST /students`` stores a student; ``POST /students/{lineage_id}/{callable}``
submits a job on its head with `asubmit` and answers 202 at once;
``GET /jobs/{callable}/{job_id}`` reports the job's state, or with ``?wait=S``
awaits it for up to S seconds, and shows the committed version with its provenance.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from examples.webapp.jobs import Student, app
from graftq import EntityNotFound, JobTimeout, UnknownCallable, Unreachable

api = FastAPI(title="graftq example")


@api.exception_handler(Unreachable)
async def unreachable(request: Request, exc: Unreachable) -> JSONResponse:
    """Redis or the broker is down: a 503 naming it, not a 500 and a traceback."""
    return JSONResponse({"detail": str(exc)}, status_code=503)


class NewStudent(BaseModel):
    name: str
    age: int


@api.post("/students", status_code=201)
def create_student(body: NewStudent) -> dict[str, Any]:
    stored = app.entities.put(Student(name=body.name, age=body.age))
    return {"lineage_id": str(stored.lineage_id), "ecs_id": str(stored.ecs_id)}


@api.post("/students/{lineage_id}/{name}", status_code=202)
async def submit(lineage_id: str, name: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Submit `name` on the student's head ("@<lineage_id>"); errors come back as 4xx here."""
    if extra and "student" in extra:  # else the body would run the job on another student
        raise HTTPException(422, "the student is the one in the URL; leave 'student' out")
    try:
        job = await app.asubmit(name, {"student": f"@{lineage_id}", **(extra or {})})
    except UnknownCallable as exc:
        raise HTTPException(404, str(exc)) from None
    except (EntityNotFound, ValueError) as exc:  # InvalidReference, ValidationError, ...
        raise HTTPException(422, str(exc)) from None
    return {"job_id": job.id, "status": job.status, "poll": f"/jobs/{name}/{job.id}"}


@api.get("/jobs/{name}/{job_id}")
async def job_state(name: str, job_id: str, wait: float = 0.0) -> dict[str, Any]:
    """The job's state; once done, the committed version and its provenance."""
    try:
        job = app.job(job_id, name)
    except UnknownCallable as exc:
        raise HTTPException(404, str(exc)) from None
    if wait > 0:
        # Not done in time (JobTimeout), or the function failed: the record below says which.
        with contextlib.suppress(JobTimeout, Exception):
            await job.aget(timeout=wait)
    execution = app.entities.execution(job_id)
    if execution is None:
        return {"job_id": job_id, "status": job.status}
    if execution.callable != name:  # a poll URL names the job's callable: never another's
        raise HTTPException(404, f"job {job_id} is a {execution.callable} job, not {name}")
    answer: dict[str, Any] = {
        "job_id": job_id,
        "status": execution.status.value,
        "provenance": execution.model_dump(mode="json", exclude={"result"}),
    }
    if execution.outputs:
        answer["version"] = app.entities.get_data(execution.outputs[:1])[0]
    return answer
