"""docker-compose.yml (no Docker engine here, so its shape is checked instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_redis_persists_with_append_only_file() -> None:
    redis = compose()["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_workers_scale_and_run_graftq_worker() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would forbid --scale worker=N
    assert "ports" not in worker
    assert "graftq worker --app" in " ".join(worker["command"])
    assert "%h" in " ".join(worker["command"])  # a distinct node name per container


def test_flower_cannot_start_without_authentication() -> None:
    flower = compose()["services"]["flower"]
    auth = flower["environment"]["GRAFTQ_FLOWER_BASIC_AUTH"]
    assert ":?" in auth  # compose refuses to start when it is unset
    command = " ".join(flower["command"])
    assert "graftq flower" in command and "--no-auth" not in command
