"""Secrets stay out of traces: argv is redacted by default, kept only when asked."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pyflight
from pyflight._redact import REDACTED, redact_argv
from pyflight.format.reader import loads


def test_secret_looking_arguments_are_redacted() -> None:
    argv = [
        "app.py",
        "--password=hunter2",
        "--token",
        "abc123",
        "API_KEY=xyz",
        "postgres://bob:pw@db.example/x",
        "--http-auth=u:p",
        "GITHUB_TOKEN=ghp_1",
        "--author",
        "Ann",
        "--port",
        "8080",
        "https://example.com/a@b",
        "--no-auth",
        "--verbose",
    ]
    assert redact_argv(argv) == [
        "app.py",
        f"--password={REDACTED}",
        "--token",
        REDACTED,
        f"API_KEY={REDACTED}",
        f"postgres://bob:{REDACTED}@db.example/x",
        f"--http-auth={REDACTED}",
        f"GITHUB_TOKEN={REDACTED}",
        "--author",
        "Ann",
        "--port",
        "8080",
        "https://example.com/a@b",
        "--no-auth",
        "--verbose",
    ]


def test_recorder_redacts_argv_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["app.py", "--password=hunter2"])
    for redact, expected in ((True, ["app.py", f"--password={REDACTED}"]), (False, sys.argv)):
        recorder = pyflight.FlightRecorder(min_age=5, max_bytes=2**20, redact_argv=redact).start()
        try:
            buffer = io.BytesIO()
            recorder.write_to(buffer)
        finally:
            recorder.stop()
        trace = loads(buffer.getvalue())
        assert json.loads(trace.meta["argv"]) == expected


def test_pyflight_run_redacts_argv_and_no_redact_keeps_it(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "prog.py").write_text("import sys\n")
    for flags, expected in (
        ((), ["prog.py", "--db-password", REDACTED, "x"]),
        (("--no-redact",), ["prog.py", "--db-password", "hunter2", "x"]),
    ):
        out = tmp_path / "out.pyfl"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyflight",
                "run",
                *flags,
                "-o",
                str(out),
                "prog.py",
                "--db-password",
                "hunter2",
                "x",
            ],
            capture_output=True,
            text=True,
            env=subprocess_env,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        trace = pyflight.load(out)
        assert json.loads(trace.meta["argv"]) == expected
        assert (b"hunter2" in out.read_bytes()) == ("--no-redact" in flags)
