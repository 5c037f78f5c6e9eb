"""The one settings object: frozen, typed, from arguments or `GRAFTQ_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from graftq.errors import GraftError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    """Everything an App is configured with (`graftq flower` reads GRAFTQ_FLOWER_BASIC_AUTH).

    =========================== ============================= ==========================
    field                       environment variable          default
    =========================== ============================= ==========================
    redis_url                   GRAFTQ_REDIS_URL              redis://127.0.0.1:6379/0
    broker_url                  GRAFTQ_BROKER_URL             the Redis URL
    result_backend              GRAFTQ_RESULT_BACKEND         the Redis URL
    visibility_timeout          GRAFTQ_VISIBILITY_TIMEOUT     3600 (seconds)
    signing_key                 GRAFTQ_SIGNING_KEY            none: publishing refused
    key_prefix                  GRAFTQ_KEY_PREFIX             graftq
    rerun_timeout               GRAFTQ_RERUN_TIMEOUT          60 (seconds of re-runs on head moves)
    commit_retries              GRAFTQ_COMMIT_RETRIES         16 (WatchError retries)
    result_expires              GRAFTQ_RESULT_EXPIRES         86400 (seconds)
    =========================== ============================= ==========================
    """

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str | None = None
    result_backend: str | None = None
    visibility_timeout: int = 3600
    signing_key: str | None = None
    key_prefix: str = "graftq"
    rerun_timeout: float = 60.0
    commit_retries: int = 16
    result_expires: int = 86400

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `GRAFTQ_*` variables; keyword arguments that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(f"GRAFTQ_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, raw, field.type)
        values.update({key: value for key, value in overrides.items() if value is not None})
        unknown = set(values) - {field.name for field in fields(cls)}
        if unknown:
            raise GraftError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(cls(), **values)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.redis_url


def _convert(name: str, raw: str, kind: Any) -> Any:
    converters: dict[str, Any] = {"int": int, "float": float}
    if kind not in converters:
        return raw
    try:
        return converters[kind](raw)
    except ValueError:
        raise GraftError(f"GRAFTQ_{name.upper()} must be a number, got {raw!r}") from None
