"""The consistency checker the fault tests run after each fault: the whole store, read raw.

A commit is one MULTI...EXEC, so after any crash every commit must be all there or
not at all. This reads every version, history, head and execution record (with SCAN:
a test-only full read) and returns what contradicts that, as readable lines.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from graftq.registry.keys import Keys


@dataclass
class Report:
    """What the store holds, and every contradiction found."""

    versions: int = 0
    lineages: int = 0
    executions: int = 0
    problems: list[str] = field(default_factory=list)


def check(client: redis.Redis, prefix: str = "graftq") -> Report:
    keys = Keys(prefix)
    raw = _read_all(client, prefix)
    versions = {k[len(keys.version_prefix) :]: json.loads(v) for k, v in raw["v"].items()}
    heads = {k.rsplit(":", 1)[1]: v for k, v in raw["head"].items()}
    histories = {k.rsplit(":", 1)[1]: v for k, v in raw["hist"].items()}
    executions = {k.split(":exec:", 1)[1]: json.loads(v) for k, v in raw["exec"].items()}
    report = Report(len(versions), len(heads), len(executions))
    problems = report.problems

    for lineage, head in heads.items():
        doc = versions.get(head)
        if doc is None:
            problems.append(f"head of {lineage} is {head}, which is not stored")
        elif doc["lineage_id"] != lineage:
            problems.append(f"head of {lineage} is {head} of lineage {doc['lineage_id']}")
        if lineage not in histories:
            problems.append(f"lineage {lineage} has a head but no history")
    for lineage, ids in histories.items():
        for ecs_id, count in Counter(ids).items():
            if count > 1:
                problems.append(f"history of {lineage} lists {ecs_id} {count} times")
            doc = versions.get(ecs_id)
            if doc is None:
                problems.append(f"history of {lineage} lists {ecs_id}, which is not stored")
            elif doc["lineage_id"] != lineage:
                problems.append(f"history of {lineage} lists {ecs_id} of another lineage")
        if lineage not in heads:
            problems.append(f"lineage {lineage} has a history but no head")
    listed = {ecs_id for ids in histories.values() for ecs_id in ids}
    for ecs_id, doc in versions.items():
        _check_version(ecs_id, doc, versions, listed, executions, problems)
    for execution_id, record in executions.items():
        for output in record.get("outputs", []):
            if output not in versions:
                problems.append(f"execution {execution_id} lists output {output}, not stored")
    return report


def _check_version(
    ecs_id: str,
    doc: dict[str, Any],
    versions: dict[str, dict[str, Any]],
    listed: set[str],
    executions: dict[str, dict[str, Any]],
    problems: list[str],
) -> None:
    if ecs_id not in listed:
        problems.append(f"version {ecs_id} is in no history")
    parent = doc.get("parent_id")
    if parent is not None and versions.get(parent, {}).get("lineage_id") != doc["lineage_id"]:
        problems.append(f"version {ecs_id}: parent {parent} missing or of another lineage")
    for _, kid in doc.get("kids", []):
        if kid not in versions:
            problems.append(f"version {ecs_id}: sub-entity {kid} is not stored")
    derived = doc.get("derived_from")
    if derived is not None:
        record = executions.get(derived)
        if record is None or record.get("status") != "SUCCESS":
            problems.append(f"version {ecs_id} derived from {derived}, which has no success")


def duplicated_outputs(client: redis.Redis, prefix: str = "graftq") -> list[str]:
    """Execution ids that produced more than one version of one lineage (ran twice)."""
    raw = _read_all(client, prefix)["v"]
    seen = Counter(
        (doc["derived_from"], doc["lineage_id"])
        for doc in map(json.loads, raw.values())
        if doc.get("derived_from")
    )
    return sorted({execution for (execution, _), count in seen.items() if count > 1})


def _read_all(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {"v": {}, "head": {}, "hist": {}, "exec": {}}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        kind = name[len(prefix) + 1 :].split(":", 1)[0]
        if kind in ("v", "head", "exec"):
            value = client.get(name)
            found[kind][name] = value.decode() if isinstance(value, bytes) else value
        elif kind == "hist":
            items = client.lrange(name, 0, -1)
            found[kind][name] = [i.decode() if isinstance(i, bytes) else i for i in items]
    return found
