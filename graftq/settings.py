"""The one settings object: frozen, typed, from arguments or `GRAFTQ_*` variables.

`from_env` reads the variables and pydantic validates and converts them (a plain model,
not pydantic-settings, whose imports — asyncio, argparse, dotenv — every worker's fork
server would carry); a bad value is an `InvalidSetting` naming the variable (or the
`App(...)` argument) it came from, with what was wrong. An empty variable counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from graftq.errors import InvalidSetting

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def _url(value: str, schemes: frozenset[str] | None = None) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if not parts.scheme or (schemes is not None and parts.scheme not in schemes):
        allowed = "scheme://..." if schemes is None else " or ".join(sorted(schemes))
        raise ValueError(f"expected a {allowed} URL")
    return value


def _redis_url(value: str) -> str:
    return _url(value, REDIS_SCHEMES)


def _any_url(value: str | None) -> str | None:
    return None if value is None else _url(value)


def _prefix(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError("must be non-empty, without whitespace")
    return value


Seconds = Annotated[int, Field(gt=0)]


class Settings(BaseModel):
    """Everything an App is configured with (`graftq flower` reads GRAFTQ_FLOWER_BASIC_AUTH).

    =========================== ============================= ==========================
    field                       environment variable          default
    =========================== ============================= ==========================
    redis_url                   GRAFTQ_REDIS_URL              redis://127.0.0.1:6379/0
    broker_url                  GRAFTQ_BROKER_URL             the Redis URL
    result_backend              GRAFTQ_RESULT_BACKEND         the Redis URL
    visibility_timeout          GRAFTQ_VISIBILITY_TIMEOUT     3600 (seconds)
    connect_timeout             GRAFTQ_CONNECT_TIMEOUT        9 (seconds, see below)
    signing_key                 GRAFTQ_SIGNING_KEY            none: publishing refused
    key_prefix                  GRAFTQ_KEY_PREFIX             graftq
    rerun_timeout               GRAFTQ_RERUN_TIMEOUT          60 (seconds of re-runs on head moves)
    commit_retries              GRAFTQ_COMMIT_RETRIES         16 (WatchError retries)
    result_expires              GRAFTQ_RESULT_EXPIRES         86400 (seconds)
    zygote                      GRAFTQ_ZYGOTE                 true (a fork server per pool process)
    =========================== ============================= ==========================

    `connect_timeout` is the longest `submit`, `execute`, `Job.get` and the CLI wait
    on a Redis or broker that does not answer before they raise `Unreachable`,
    naming the URL (see `graftq.worker.connections`); a worker tries a commit refused by
    an unreachable store again for as long, so its job outlives a Redis restart.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: Annotated[str, AfterValidator(_redis_url)] = DEFAULT_REDIS_URL
    broker_url: Annotated[str | None, AfterValidator(_any_url)] = None
    result_backend: Annotated[str | None, AfterValidator(_any_url)] = None
    visibility_timeout: Seconds = 3600
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 9.0
    signing_key: Annotated[str | None, Field(repr=False)] = None  # never in logs
    key_prefix: Annotated[str, AfterValidator(_prefix)] = "graftq"
    rerun_timeout: Annotated[float, Field(ge=0)] = 60.0  # 0: no re-runs
    commit_retries: Annotated[int, Field(gt=0)] = 16
    result_expires: Seconds = 86400
    zygote: bool = True  # isolated bodies on a worker fork from a lean fork server

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `GRAFTQ_*` variables (of `env`, else the process environment);
        keyword arguments that are not None win."""
        env = os.environ if env is None else env
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(given) - set(cls.model_fields)
        if unknown:
            raise InvalidSetting(
                f"unknown settings: {', '.join(sorted(unknown))}; "
                f"known: {', '.join(cls.model_fields)}"
            )
        variables = {name: env.get(f"GRAFTQ_{name.upper()}") for name in cls.model_fields}
        values = {name: value for name, value in variables.items() if value}  # "" is unset
        try:
            return cls(**{**values, **given})
        except pydantic.ValidationError as exc:
            raise InvalidSetting(_explain(exc, given)) from None

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.redis_url


def _explain(exc: pydantic.ValidationError, given: dict[str, Any]) -> str:
    """One clause per bad value, naming where it came from."""
    clauses = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "?"
        source = f"App({name}=...)" if name in given else f"GRAFTQ_{name.upper()}"
        message = str(error["msg"]).removeprefix("Value error, ")
        clauses.append(f"{source}={error.get('input')!r:.80}: {message}")
    return "invalid settings: " + "; ".join(clauses)
