"""analysis.frames.library_wait / wait_name: a wait named in the user's terms by the
standard-library calls at the inner end of its stack."""

from __future__ import annotations

from pyflight.analysis.frames import LibraryWait, library_wait, wait_name
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

LIB = "/py/lib/python3.12"
COMMUNICATE = Frame("Popen._communicate", f"{LIB}/subprocess.py", 2115)
RUN = Frame("run", f"{LIB}/subprocess.py", 550)
USER = Frame("render_thumbnail", "/app/thumbs.py", 14)
WORKER = Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 93)


def test_the_outermost_library_call_under_the_users_line_names_the_wait() -> None:
    stack = (COMMUNICATE, Frame("Popen.communicate", f"{LIB}/subprocess.py", 1209), RUN, USER, WORKER)
    assert library_wait(stack) == LibraryWait("waiting for a subprocess (communicate)", USER, "subprocess")
    assert wait_name(BlockReason.SELECT, stack) == "waiting for a subprocess (communicate)"
    # communicate ends in wait: still communicate; Popen.wait(timeout) sleeps in a loop
    waiting = (
        Frame("Popen._wait", f"{LIB}/subprocess.py", 2040),
        Frame("Popen.wait", f"{LIB}/subprocess.py", 1264),
    )
    assert library_wait((*waiting, *stack)) == library_wait(stack)
    waited = LibraryWait("waiting for a subprocess (wait)", USER, "subprocess")
    assert library_wait((*waiting, USER)) == waited


def test_a_job_that_is_the_library_call_itself_has_no_site() -> None:
    """``pool.submit(subprocess.run, ...)``: no frame of the program's under the call."""
    assert library_wait((COMMUNICATE, RUN, WORKER)) == LibraryWait(
        "waiting for a subprocess (communicate)", None, "subprocess"
    )


def test_only_the_inner_library_frames_count() -> None:
    """A subprocess call outer to the program's frame (the program's code run from a
    child-reaping helper) does not name a select the program made itself; nor does a
    module of the program's that is called subprocess.py."""
    select_ = Frame("Server.poll", "/app/server.py", 40)
    assert library_wait((select_, COMMUNICATE, RUN)) is None
    assert wait_name(BlockReason.SELECT, (select_, COMMUNICATE, RUN)) == "select"
    assert library_wait((Frame("Popen.communicate", "/app/subprocess.py", 3), USER)) is None
    assert wait_name(None, ()) == "blocked"
