"""Functions published at run time: signed with HMAC-SHA256, verified before unpickling.

`publish` cloudpickles a function *by value* (so workers need not have its
module), signs name, version and payload with `GRAFTQ_SIGNING_KEY`, and stores
it under its name and content version. A worker verifies the signature before
it unpickles anything, then caches the function per version.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import types
import typing
from collections.abc import Callable
from typing import Any

import cloudpickle
import redis

from graftq.errors import IsolationError, RegistrationError, SignatureError, UnknownCallable
from graftq.registry import overlay
from graftq.registry.keys import Keys
from graftq.tasks.callables import CallableInfo, describe


def _sign(key: str, name: str, version: str, payload: bytes) -> str:
    message = name.encode() + b"\x00" + version.encode() + b"\x00" + payload
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _by_value(func: Callable[..., Any]) -> Callable[..., Any]:
    """A copy cloudpickle must serialize by value, with its annotations resolved here."""
    clone = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__ = func.__qualname__
    clone.__module__ = func.__module__
    clone.__doc__ = func.__doc__
    clone.__annotations__ = typing.get_type_hints(func, include_extras=True)
    return clone


class Functions:
    """Published functions in Redis: `publish` on producers, `load` on workers."""

    def __init__(self, client: redis.Redis, keys: Keys, signing_key: str | None) -> None:
        self._client = client
        self._keys = keys
        self._signing_key = signing_key
        self._cache: dict[tuple[str, str], CallableInfo] = {}

    def publish(self, func: Callable[..., Any], name: str | None = None) -> CallableInfo:
        """Sign and store `func`; its info, whose `version` is the content hash."""
        if overlay.isolated():
            raise IsolationError(
                "app.publish inside an isolated call is refused: a body's writes never "
                "reach Redis; publish from the producer instead"
            )
        if not self._signing_key:
            raise RegistrationError(
                "cannot publish without a signing key: set GRAFTQ_SIGNING_KEY "
                "(the same on producers and workers)"
            )
        info = describe(func, name=name or str(getattr(func, "__name__", "")), published=True)
        payload = cloudpickle.dumps(_by_value(func))
        version = hashlib.sha256(payload).hexdigest()[:16]
        record = {
            "payload": base64.b64encode(payload).decode(),
            "signature": _sign(self._signing_key, info.name, version, payload),
        }
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.function(info.name), version, json.dumps(record))
            pipe.set(self._keys.function_latest(info.name), version)
            pipe.sadd(self._keys.functions, info.name)
            pipe.execute()
        published = dataclasses.replace(info, version=version)
        self._cache[(info.name, version)] = published
        return published

    def names(self) -> list[str]:
        return sorted(typing.cast(set[str], self._client.smembers(self._keys.functions)))

    def latest(self, name: str) -> str:
        version = typing.cast(str | None, self._client.get(self._keys.function_latest(name)))
        if version is None:
            raise UnknownCallable(f"no callable named {name!r} is registered or published")
        return version

    def load(self, name: str, version: str | None = None) -> CallableInfo:
        """The published function, verified before anything is unpickled."""
        version = version or self.latest(name)
        cached = self._cache.get((name, version))
        if cached is not None:
            return cached
        if not self._signing_key:
            raise SignatureError(
                f"refusing published function {name!r} version {version}: this process has "
                "no GRAFTQ_SIGNING_KEY, so its signature cannot be checked"
            )
        raw = typing.cast(str | None, self._client.hget(self._keys.function(name), version))
        if raw is None:
            raise UnknownCallable(f"no published function {name!r} with version {version}")
        record = json.loads(raw)
        payload = base64.b64decode(record.get("payload", ""))
        expected = _sign(self._signing_key, name, version, payload)
        if not hmac.compare_digest(expected, str(record.get("signature", ""))):
            raise SignatureError(
                f"refusing published function {name!r} version {version}: bad signature "
                "(signed with another GRAFTQ_SIGNING_KEY, or tampered with); nothing was loaded"
            )
        func = cloudpickle.loads(payload)
        info = dataclasses.replace(describe(func, name=name, published=True), version=version)
        self._cache[(name, version)] = info
        return info
