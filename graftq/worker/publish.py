"""Functions published at run time: signed with HMAC-SHA256, verified before unpickling.

`publish` cloudpickles a function *by value* (so workers need not have its
module), signs name, version and payload with `GRAFTQ_SIGNING_KEY`, and stores
it under its name and content version. A worker verifies the signature before
it unpickles anything, then caches the function per version.

What selects the version is signed too: a name's newest-version pointer holds
version and a sequence number that grows with each publish, signed with the
name. A process refuses a pointer whose sequence is below one it has already
seen, so a Redis writer without the key cannot point it back at an older
version (SECURITY.md says what remains: a process that never saw the newer
pointer cannot tell).
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
from graftq.registry.entity import entity_classes, register
from graftq.registry.keys import Keys
from graftq.tasks.callables import CallableInfo, describe

PUBLISH_RETRIES = 16  # WatchError retries when publishes of one name race


def _sign(key: str, name: str, version: str, payload: bytes) -> str:
    message = name.encode() + b"\x00" + version.encode() + b"\x00" + payload
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _sign_pointer(key: str, name: str, version: str, seq: int) -> str:
    return _sign(key, name, version, b"latest\x00" + str(seq).encode())


def _fields(raw: str | None, what: str, required: dict[str, type]) -> dict[str, Any]:
    """A stored JSON object with `required` members of those types; SignatureError if not."""
    try:
        found = json.loads(raw or "")
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(
        isinstance(found.get(member), kind) for member, kind in required.items()
    ):
        raise SignatureError(f"refusing {what}: the stored record is not a signed record")
    return found


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
        self._seen: dict[str, int] = {}  # name → highest pointer sequence seen here

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
        try:
            payload = cloudpickle.dumps(_by_value(func))
        except Exception as exc:  # pickle raises TypeError, PicklingError, ... for what it refuses
            raise RegistrationError(
                f"cannot publish {info.name!r}: cloudpickle cannot serialize it with what it "
                f"uses ({type(exc).__name__}: {exc}); a published function travels by value, "
                "so it may not capture a lock, a connection or an App: make those inside it"
            ) from exc
        version = hashlib.sha256(payload).hexdigest()[:16]
        record = {
            "payload": base64.b64encode(payload).decode(),
            "signature": _sign(self._signing_key, info.name, version, payload),
        }
        self._store(info.name, version, json.dumps(record))
        published = dataclasses.replace(info, version=version)
        self._cache[(info.name, version)] = published
        return published

    def _store(self, name: str, version: str, record: str) -> None:
        """Store the record and move the signed pointer on, with the next sequence number."""
        assert self._signing_key is not None
        pointer_key = self._keys.function_latest(name)
        for _ in range(PUBLISH_RETRIES):
            with typing.cast(Any, self._client).pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(pointer_key)
                    current = typing.cast(str | None, pipe.get(pointer_key))
                    seq = self._pointer(name, current)[1] + 1 if current else 1
                    pointer = {
                        "version": version,
                        "seq": seq,
                        "signature": _sign_pointer(self._signing_key, name, version, seq),
                    }
                    pipe.multi()
                    pipe.hset(self._keys.function(name), version, record)
                    pipe.set(pointer_key, json.dumps(pointer))
                    pipe.sadd(self._keys.functions, name)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise RegistrationError(f"cannot publish {name!r}: other publishes kept racing it")

    def _pointer(self, name: str, raw: str) -> tuple[str, int]:
        """Version and sequence of a verified pointer; SignatureError if forged or rolled back."""
        what = f"the newest-version pointer of published function {name!r}"
        pointer = _fields(raw, what, {"version": str, "seq": int, "signature": str})
        version, seq = pointer["version"], pointer["seq"]
        if self._signing_key is None:  # cannot verify; `load` refuses to run anything anyway
            return version, seq
        expected = _sign_pointer(self._signing_key, name, version, seq)
        if not hmac.compare_digest(expected, pointer["signature"]):
            raise SignatureError(f"refusing {what}: bad signature (forged or tampered with)")
        seen = self._seen.get(name, 0)
        if seq < seen:
            raise SignatureError(
                f"refusing {what}: it was rolled back to sequence {seq} (version {version}), "
                f"older than sequence {seen} this process has already seen"
            )
        self._seen[name] = seq
        return version, seq

    def names(self) -> list[str]:
        return sorted(typing.cast(set[str], self._client.smembers(self._keys.functions)))

    def latest(self, name: str) -> str:
        raw = typing.cast(str | None, self._client.get(self._keys.function_latest(name)))
        if raw is None:
            raise UnknownCallable(f"no callable named {name!r} is registered or published")
        return self._pointer(name, raw)[0]

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
        what = f"published function {name!r} version {version}"
        record = _fields(raw, what, {"payload": str, "signature": str})
        try:
            payload = base64.b64decode(record["payload"], validate=True)
        except ValueError:
            raise SignatureError(f"refusing {what}: its payload is not base64") from None
        expected = _sign(self._signing_key, name, version, payload)
        if not hmac.compare_digest(expected, record["signature"]):
            raise SignatureError(
                f"refusing published function {name!r} version {version}: bad signature "
                "(signed with another GRAFTQ_SIGNING_KEY, or tampered with); nothing was loaded"
            )
        func = cloudpickle.loads(payload)
        info = dataclasses.replace(describe(func, name=name, published=True), version=version)
        schemas = (info.input_model.__pydantic_core_schema__, info.output_adapter.core_schema)
        for cls in {cls for schema in schemas for cls in entity_classes(schema)}:
            register(cls)  # a class that came by value with it: see `register`
        self._cache[(name, version)] = info
        return info
