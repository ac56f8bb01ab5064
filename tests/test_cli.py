"""The pyflight command line, run as a user runs it: in a child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyflight
from pyflight.core.events import Kind


def _pyflight(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyflight", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_info_self_names_the_core(subprocess_env: dict[str, str]) -> None:
    from pyflight import core

    result = _pyflight("info", "--self", env=subprocess_env)
    assert result.returncode == 0
    assert f"core: {core.BACKEND_NAME}" in result.stdout


def test_bad_arguments_get_one_line_and_exit_2(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    for args in (
        ["info"],
        ["nonsense"],
        ["run", "--max-bytes", "lots", "x.py"],
        ["run"],
        ["run", "nope.py"],
        ["run", "--serve", "localhost:http", "x.py"],
        ["run", "--signal", "SIGNOPE", "x.py"],
        ["run", "--min", "3", "x.py"],  # no abbreviations: the program's options stay the program's
        ["snapshot"],
        ["snapshot", "-3"],
    ):
        result = _pyflight(*args, env=subprocess_env, cwd=tmp_path)
        assert result.returncode == 2, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_info_on_a_bad_file_is_one_clear_line(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pyfl"
    junk.write_bytes(b"definitely not a trace")
    result = _pyflight("info", str(junk), env=subprocess_env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a readable pyflight trace" in result.stderr
    missing = _pyflight("info", str(tmp_path / "missing.pyfl"), env=subprocess_env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_run_keeps_exit_code_and_writes_window(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, pyflight
            with pyflight.task("job"):
                pyflight.log("args", " ".join(sys.argv[1:]))
            sys.exit(3)
            """
        )
    )
    out = tmp_path / "out.pyfl"
    result = _pyflight("run", "-o", str(out), str(script), "a", "--b", env=subprocess_env)
    assert result.returncode == 3, result.stderr
    trace = pyflight.load(out)
    (log,) = [e for e in trace.events if e.kind == Kind.LOG]
    assert log.arg("message") == "a --b"
    info = _pyflight("info", str(out), env=subprocess_env)
    assert info.returncode == 0 and "LOG" in info.stdout


def test_run_module_and_unhandled_exception(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "crashy.py").write_text(
        "import pyflight\npyflight.log('x', 'about to fail')\nraise KeyError('boom')\n"
    )
    out = tmp_path / "crash.pyfl"
    env = dict(subprocess_env, PYTHONPATH=f"{tmp_path}:{subprocess_env['PYTHONPATH']}")
    result = _pyflight("run", "-o", str(out), "-m", "crashy", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "KeyError: 'boom'" in result.stderr
    assert pyflight.load(out).count_by_kind()[Kind.LOG] == 1


def test_help_lists_the_commands(subprocess_env: dict[str, str]) -> None:
    result = _pyflight("--help", env=subprocess_env)
    assert result.returncode == 0
    for command in ("run", "snapshot", "info", "demo"):
        assert command in result.stdout
    run_help = _pyflight("run", "--help", env=subprocess_env)
    assert run_help.returncode == 0
    for option in ("--serve", "--token", "--no-children", "--signal", "--snapshot-dir", "--quota"):
        assert option in run_help.stdout


def test_run_with_loop_stall_trigger_writes_a_named_snapshot(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "stall.py"
    script.write_text(
        "import asyncio, time\n"
        "async def main():\n"
        "    await asyncio.sleep(0.2)\n"
        "    time.sleep(0.3)  # blocks the event loop\n"
        "    await asyncio.sleep(1.0)\n"
        "asyncio.run(main())\n"
    )
    result = _pyflight(
        "run", "--loop-stall", "0.1", "-o", str(tmp_path / "out.pyfl"), str(script), env=subprocess_env
    )
    assert result.returncode == 0, result.stderr
    (triggered,) = tmp_path.glob("pyflight-*-loop-stall.pyfl")
    reasons = [e.arg("reason") for e in pyflight.load(triggered).events if e.kind == Kind.TRIGGER]
    assert reasons == ["loop-stall"]


def test_every_verb_says_a_missing_file_in_one_line_and_exits_2(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pyfl")
    for verb, args in (
        ("info", [missing]),
        ("report", [missing]),
        ("report", [missing, "--json"]),
        ("export", [missing, "--format", "chrome", "-o", str(tmp_path / "out.json")]),
        ("view", [missing, "--no-browser", "--port", "0"]),
        ("run", [str(tmp_path / "missing.py")]),
    ):
        result = _pyflight(verb, *args, env=subprocess_env, cwd=tmp_path)
        assert result.returncode == 2, (verb, result)
        assert result.stderr.startswith(f"pyflight {verb}: error: "), (verb, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, (verb, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_every_trace_verb_names_a_corrupt_trace_and_exits_1(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pyfl"
    junk.write_bytes(b"PYFL but not really a trace" * 3)
    for verb, args in (
        ("info", []),
        ("report", ["--json"]),
        ("export", ["--format", "perfetto", "-o", str(tmp_path / "out.pftrace")]),
        ("view", ["--no-browser", "--port", "0"]),
    ):
        result = _pyflight(verb, str(junk), *args, env=subprocess_env)
        assert result.returncode == 1, (verb, result)
        assert result.stderr.startswith(f"pyflight {verb}: error: {junk} is not a readable pyflight trace: ")
        assert result.stderr.count("\n") == 1, (verb, result.stderr)
        assert result.stdout == ""
    assert not (tmp_path / "out.pftrace").exists()


def _empty_trace(tmp_path: Path) -> Path:
    """A trace of a recorder with no source: the header, metadata, little else."""
    out = tmp_path / "trace.pyfl"
    rec = pyflight.FlightRecorder(sources=[])
    rec.start()
    try:
        rec.write_to(out)
    finally:
        rec.stop()
    return out


def test_an_output_that_cannot_be_written_exits_2(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    out = _empty_trace(tmp_path)
    nowhere = str(tmp_path / "no-such-dir" / "x")
    for verb, args in (
        ("export", ["--format", "folded", "-o", nowhere]),
        ("report", ["--html", nowhere]),
    ):
        result = _pyflight(verb, str(out), *args, env=subprocess_env)
        assert result.returncode == 2, (verb, result)
        assert result.stderr.startswith(f"pyflight {verb}: error: cannot write {nowhere}: "), result.stderr
        assert result.stderr.count("\n") == 1


def test_dash_as_the_output_means_stdout(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """``-o -`` pipes (``| jq``, ``| flamegraph.pl``) and never leaves a file named "-"."""
    import gzip
    import json

    out = _empty_trace(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "pyflight", *args]
        return subprocess.run(argv, capture_output=True, env=subprocess_env, cwd=tmp_path, timeout=120)

    chrome = run("export", str(out), "-f", "chrome", "-o", "-")
    assert chrome.returncode == 0, chrome.stderr
    assert "traceEvents" in json.loads(chrome.stdout)
    pprof = run("export", str(out), "-f", "pprof", "-o", "-")  # binary, byte for byte
    assert pprof.returncode == 0 and gzip.decompress(pprof.stdout) is not None
    page = run("report", str(out), "--html", "-")
    assert page.returncode == 0, page.stderr
    assert page.stdout.lstrip().lower().startswith(b"<!doctype html")
    assert page.stdout.rstrip().endswith(b"</html>")
    both = run("report", str(out), "--html", "-", "--json")
    assert both.returncode == 2 and both.stdout == b"" and both.stderr.count(b"\n") == 1
    assert not (tmp_path / "-").exists()


READING_SIDE = ("pyflight.format.reader", "pyflight.analysis", "pyflight.triggers.http", "pyflight.export")


def test_import_pyflight_keeps_the_reading_side_out(subprocess_env: dict[str, str]) -> None:
    """A recorded process pays only for the recording side; ``pyflight.load`` and
    ``pyflight.serve`` still work, imported on first use."""
    code = (
        "import sys, pyflight\n"
        f"print(sorted(m for m in sys.modules if m.startswith({READING_SIDE!r})))\n"
        "assert pyflight.load.__module__ == 'pyflight.format.reader'\n"
        "assert pyflight.Trace.__name__ == 'Trace' and callable(pyflight.serve)\n"
        "assert issubclass(pyflight.TraceFormatError, pyflight.PyflightError)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "ok"]


def test_a_program_under_pyflight_run_does_not_carry_the_reading_side(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "modules.py"
    script.write_text(
        f"import sys\nprint(sorted(m for m in sys.modules if m.startswith({READING_SIDE!r})))\n"
    )
    result = _pyflight("run", "-o", str(tmp_path / "out.pyfl"), str(script), env=subprocess_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "[]"
