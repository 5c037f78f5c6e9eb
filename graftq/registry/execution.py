"""The Execution record: which callable made which versions from which inputs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ExecutionStatus(StrEnum):
    """Lifecycle of a recorded execution; both states are terminal."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class Execution(BaseModel):
    """One run of a callable, written in the same transaction as its outputs."""

    model_config = ConfigDict(frozen=True)

    id: str
    callable: str
    callable_version: str
    inputs: dict[str, Any] = Field(
        description="parameter → resolved version id (str) or the literal value"
    )
    outputs: list[str] = Field(default_factory=list, description="ecs_ids of returned entities")
    status: ExecutionStatus
    started_at: datetime
    finished_at: datetime
    worker: str = Field(description="Celery node name, or host:pid for app.execute")
    result: Any = Field(default=None, description="the return value as typed JSON (encoding)")
    error: str | None = Field(default=None, description="'Type: message' when it failed")
    branched: bool = Field(default=False, description="outputs stored as a branch")
    attempts: int = Field(default=1, description="runs needed (re-runs after head conflicts)")
    input_digest: str | None = Field(
        default=None, description="hash of the callable and its input as given (replay check)"
    )
