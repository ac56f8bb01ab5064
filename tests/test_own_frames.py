"""Which frames of a recorded stack are the program's (analysis/own_frames.py)."""

from __future__ import annotations

from pathlib import Path

import pyflight
from pyflight.analysis.own_frames import program_stack
from pyflight.format.reader import Frame

PACKAGE = str(Path(pyflight.__file__).parent)


def _frame(name: str, file: str, line: int = 1) -> Frame:
    return Frame(name, file, line)


def test_hook_and_launcher_frames_are_cut_from_a_program_stack() -> None:
    stack = (
        _frame("wait", f"{PACKAGE}/sources/blocking.py"),
        _frame("handle", "/srv/app.py", 12),
        _frame("main", "/srv/app.py", 30),
        _frame("_run_code", "<frozen runpy>"),
        _frame("run_program", f"{PACKAGE}/run.py"),
    )
    assert program_stack(stack) == stack[1:3]


def test_pyflight_work_at_exit_is_not_the_program_s() -> None:
    # an atexit handler of pyflight's (closing its control channel) runs on the main
    # thread with no program frame below it: a sample there is none of the program's CPU
    at_exit = (
        _frame("close", f"{PACKAGE}/triggers/control.py", 120),
        _frame("disable", f"{PACKAGE}/triggers/control.py", 270),
    )
    assert program_stack(at_exit) == ()
    # the write at exit, called by the launcher
    launcher_write = (
        _frame("write", f"{PACKAGE}/recorder.py"),
        _frame("_at_exit", f"{PACKAGE}/run.py"),
    )
    assert program_stack(launcher_write) == ()


def test_a_program_stack_without_pyflight_frames_is_kept_as_is() -> None:
    stack = (_frame("f", "/srv/app.py", 3), _frame("<module>", "/srv/app.py", 9))
    assert program_stack(stack) is stack


def test_the_demo_shipped_with_pyflight_is_program_code() -> None:
    stack = (_frame("player", f"{PACKAGE}/demo.py", 40),)
    assert program_stack(stack) == stack
