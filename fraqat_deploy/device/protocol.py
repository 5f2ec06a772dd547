"""The request / status / result protocol between the CLI and the app (``docs/design.md``, "The phone protocol").

One JSON Schema file describes each message (``schemas/``); golden examples beside them are read by the Python
tests and by the Kotlin core's tests, so the two sides cannot drift apart. Statistics are defined here once
(the Kotlin core implements the same definition and is tested against ``schemas/examples/stats.json``).
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
#: the Android app (android_app/): package, benchmark activity and the folder adb can reach
PACKAGE = "dev.fraqat.deploy"
ACTIVITY = ".BenchmarkActivity"
FILES_DIR = f"/sdcard/Android/data/{PACKAGE}/files"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EXAMPLES_DIR = SCHEMA_DIR / "examples"
MESSAGES = ("request", "status", "result")

#: where a request's files live, relative to the app's files folder
MODELS_DIR = "models"
RUNS_DIR = "runs"


class ProtocolError(ValueError):
    """A message that does not follow its schema."""


@cache
def schema(message: str) -> dict[str, Any]:
    if message not in MESSAGES:
        raise ValueError(f"unknown message '{message}' (one of {', '.join(MESSAGES)})")
    return json.loads((SCHEMA_DIR / f"{message}.schema.json").read_text())


def validate(message: str, data: Any) -> None:
    """Raise ProtocolError naming the first violation of ``message``'s schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(message))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
        raise ProtocolError(f"{message}.json is not valid at {where}: {errors[0].message}")


def run_dir(request_id: str) -> str:
    """A request's folder, relative to the app's files folder."""
    return f"{RUNS_DIR}/{request_id}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): rank ``q/100 * (n-1)``."""
    if not sorted_values:
        raise ValueError("no values")
    rank = q / 100.0 * (len(sorted_values) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def summarize(values_ms: list[float]) -> dict[str, float | int]:
    """n, min, p50, p90, max, mean and population standard deviation of timings in ms (warm-up already left out)."""
    if not values_ms:
        raise ValueError("no timings to summarize")
    ordered = sorted(float(v) for v in values_ms)
    n = len(ordered)
    mean = sum(ordered) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / n)
    return {"n": n, "min": ordered[0], "p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "max": ordered[-1], "mean": mean, "std": std}


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
