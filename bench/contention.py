"""Stress mode of the contention test: 4 producers x 50 lineage increments on `-c 2`, N rounds.

    .venv/bin/python bench/contention.py [--rounds 20]

Runs tests/integration/worker/test_contention.py with GRAFTQ_CONTENTION_ROUNDS set (CI runs
3 rounds); every round must end at exactly 200. Prints each round's runs per job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "GRAFTQ_CONTENTION_ROUNDS": str(args.rounds)}
    test = "tests/integration/worker/test_contention.py"
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
