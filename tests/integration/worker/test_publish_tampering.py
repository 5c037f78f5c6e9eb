"""Published functions against a Redis writer without the key (issue 10 items 3 and 8).

What selects the version (the name's newest-version pointer) is signed with name,
version and a sequence number, so it cannot be pointed at an older version unnoticed.
"""

from __future__ import annotations

import json

import pytest
import redis

from graftq import SignatureError
from graftq.registry.keys import Keys
from graftq.worker.publish import Functions


def v1(x: int) -> int:
    return x + 1


def v2(x: int) -> int:
    return x + 2


def functions(client: redis.Redis, key: str | None = "k1") -> Functions:
    return Functions(client, Keys(), key)


def test_newest_version_pointer_is_signed(redis_client: redis.Redis) -> None:
    producer = functions(redis_client)
    old = producer.publish(v1, "inc").version
    new = producer.publish(v2, "inc").version
    assert functions(redis_client).load("inc").version == new

    redis_client.set(Keys().function_latest("inc"), old)  # a writer without the key

    with pytest.raises(SignatureError, match="inc"):
        functions(redis_client).load("inc")


def test_replaying_an_older_signed_pointer_is_refused_where_the_newer_was_seen(
    redis_client: redis.Redis,
) -> None:
    producer = functions(redis_client)
    producer.publish(v1, "inc")
    old_pointer = redis_client.get(Keys().function_latest("inc"))
    new = producer.publish(v2, "inc").version
    worker = functions(redis_client)
    assert worker.load("inc").version == new

    assert old_pointer is not None
    redis_client.set(Keys().function_latest("inc"), old_pointer)

    with pytest.raises(SignatureError, match="rolled back"):
        worker.load("inc")


def test_a_forged_sequence_number_breaks_the_signature(redis_client: redis.Redis) -> None:
    producer = functions(redis_client)
    old = producer.publish(v1, "inc").version
    producer.publish(v2, "inc")
    raw = redis_client.get(Keys().function_latest("inc"))
    assert raw is not None
    pointer = json.loads(raw)
    pointer.update(version=old, seq=pointer["seq"] + 1)
    redis_client.set(Keys().function_latest("inc"), json.dumps(pointer))

    with pytest.raises(SignatureError, match="bad signature"):
        functions(redis_client).load("inc")


@pytest.mark.parametrize("garbage", ["not json", "[]", '{"payload": 1}', '{"payload": "!!"}'])
def test_a_record_that_is_not_a_signed_record_is_a_signature_error(
    redis_client: redis.Redis, garbage: str
) -> None:
    version = functions(redis_client).publish(v1, "inc").version
    redis_client.hset(Keys().function("inc"), version, garbage)

    with pytest.raises(SignatureError, match="inc"):
        functions(redis_client).load("inc", version)


@pytest.mark.parametrize("garbage", ["not json", "[1]", '{"version": 3}'])
def test_a_pointer_that_is_not_a_signed_pointer_is_a_signature_error(
    redis_client: redis.Redis, garbage: str
) -> None:
    functions(redis_client).publish(v1, "inc")
    redis_client.set(Keys().function_latest("inc"), garbage)

    with pytest.raises(SignatureError, match="inc"):
        functions(redis_client).load("inc")
