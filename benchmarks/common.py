"""Helpers the benchmarks share: paths, the prompts they send, percentiles, the machine's facts."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.replay.prompts import reward_file_prompts

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PARETOSERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
VAL_PROMPTS = SHARED_DATA / "val.jsonl"  # the prompts a benchmark sends, where present


def val_prompts() -> list[str]:
    """The prompts of ../shared/data/val.jsonl in file order; empty when the file is absent."""
    return reward_file_prompts(VAL_PROMPTS) if VAL_PROMPTS.exists() else []


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-th percentile (numpy's default: linear interpolation); None when empty."""
    if len(values) == 0:
        return None
    return float(np.percentile(values, q))


def machine_info(*packages: str) -> dict[str, Any]:
    """The machine a benchmark ran on, plus the `__version__` of each named package (imported
    here, so name only what the benchmark has imported anyway)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        **{name: importlib.import_module(name).__version__ for name in packages},
    }
