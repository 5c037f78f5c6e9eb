"""graftq: typed functions on Celery workers over versioned Pydantic entities in Redis."""

from graftq.app import App
from graftq.errors import (
    CorruptVersion,
    EntityNotFound,
    GraftError,
    InvalidEntity,
    InvalidInput,
    InvalidReference,
    InvalidResult,
    InvalidSetting,
    IsolationError,
    JobTimeout,
    RegistrationError,
    ReturnTypeError,
    SignatureError,
    TimeLimitExceeded,
    UnknownCallable,
    UnknownEntityType,
    Unreachable,
    VersionConflict,
)
from graftq.registry.entity import Entity
from graftq.registry.execution import Execution, ExecutionStatus
from graftq.registry.store import EntityRegistry
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo, CallableRegistry
from graftq.worker.job import Job

__version__ = "0.1.0"

__all__ = [
    # the application
    "App",
    "Settings",
    # entities and their store
    "Entity",
    "EntityRegistry",
    "Execution",
    "ExecutionStatus",
    # callables and the jobs that run them
    "CallableInfo",
    "CallableRegistry",
    "Job",
    # errors
    "CorruptVersion",
    "EntityNotFound",
    "GraftError",
    "InvalidEntity",
    "InvalidInput",
    "InvalidReference",
    "InvalidResult",
    "InvalidSetting",
    "IsolationError",
    "JobTimeout",
    "RegistrationError",
    "ReturnTypeError",
    "SignatureError",
    "TimeLimitExceeded",
    "UnknownCallable",
    "UnknownEntityType",
    "Unreachable",
    "VersionConflict",
]
