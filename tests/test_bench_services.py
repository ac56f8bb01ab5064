"""A smoke run of bench/bench_services.py at tiny scale: it starts a real server with and
without the recorder, loads it, and reports CPU per request and the window's density."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_services.py"


@pytest.mark.skipif(shutil.which("taskset") is None, reason="the benchmark pins with taskset")
def test_the_service_benchmark_measures_both_sides(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--servers", "aiohttp", "--pairs", "1", "--seconds", "1",
         "--warmup", "0.5", "--connections", "4", "--own-load", "--json", str(out)],
        capture_output=True, text=True, env=subprocess_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["aiohttp"]
    for mode in ("no recorder", "default recorder"):
        assert rows[mode]["cpu"] > 0 and rows[mode]["rps"] > 0, rows
    recorded = rows["default recorder"]
    assert recorded["bytes_per_event"] > 0 and recorded["events_per_request"] > 0, recorded
    assert recorded["window_seconds"] > 0
    assert "10 MiB holds" in result.stdout


@pytest.mark.skipif(shutil.which("taskset") is None, reason="the benchmark pins with taskset")
def test_a_fixed_rate_offers_that_rate_and_no_more(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """--rate paces the built-in client: the server sees about that many requests a second
    (fewer only if the machine cannot keep up), never a saturating flood."""
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--servers", "aiohttp", "--pairs", "1", "--seconds", "2",
         "--warmup", "0.5", "--connections", "4", "--rate", "100", "--no-default", "--json", str(out)],
        capture_output=True, text=True, env=subprocess_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "at 100 req/s" in result.stdout
    rps = json.loads(out.read_text())["aiohttp"]["no recorder"]["rps"]
    assert 0 < rps <= 110, rps
