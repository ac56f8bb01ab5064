"""Helpers for benchmarks: repeat, interleave, summarise with median and spread."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

CORES = ("c", "python")


def summary(values: Sequence[float]) -> str:
    """``median [min..max]`` of a series."""
    return f"{statistics.median(values):9.1f} [{min(values):.1f}..{max(values):.1f}]"


def run_in_core(script: str, core: str, *args: str) -> dict[str, object]:
    """Run ``script --child ARGS`` with the chosen core; it prints one JSON object."""
    env = dict(os.environ)
    env["PYFLIGHT_PURE_PYTHON"] = "1" if core == "python" else "0"
    out = subprocess.run(
        [sys.executable, script, "--child", *args], env=env, check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def c_core_available() -> bool:
    try:
        import pyflight._core  # noqa: F401
    except ImportError:
        return False
    return True
