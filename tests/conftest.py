"""Shared fixtures. Every test leaves no recorder running."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from pyflight import core
from pyflight.recorder import active_recorder

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def pytest_report_header(config: pytest.Config) -> str:
    reason = f" ({core.fallback_reason})" if core.fallback_reason else ""
    return f"pyflight core: {core.BACKEND_NAME}{reason}"


@pytest.fixture(autouse=True)
def _no_leftover_recorder() -> Iterator[None]:
    yield
    recorder = active_recorder()
    if recorder is not None:
        recorder.stop()
        pytest.fail("test left a FlightRecorder running")


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: same core choice, package importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
