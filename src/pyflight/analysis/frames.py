"""Which frame of a stack to name: the user's frame, library frames, the frame inside an event-loop step."""

from __future__ import annotations

import enum
import functools
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pyflight.format.reader import Frame

_LIB_RE = re.compile(
    r"(^<)|([/\\]lib[/\\]python3\.\d+[/\\](?!site-packages))|([/\\]pyflight[/\\]"
    r"(sources|core|format|triggers|integrations|analysis|report|export)[/\\])"
    r"|([/\\]pyflight[/\\](annotate|recorder|__init__|run|cli)\.py$)"
)


THIRD_PARTY_RE = re.compile(r"[/\\](site|dist)-packages[/\\]")
_PYFLIGHT_RE = re.compile(r"[/\\]pyflight[/\\]")


@functools.lru_cache(maxsize=65536)
def _file_kind(file: str) -> tuple[bool, bool, bool]:
    """(library, third party, pyflight's own) for a file: a trace names few files, and
    the rules ask about the same ones hundreds of thousands of times."""
    return bool(_LIB_RE.search(file)), bool(THIRD_PARTY_RE.search(file)), bool(_PYFLIGHT_RE.search(file))


def is_library(frame: Frame) -> bool:
    """True for frames of the standard library or of pyflight itself."""
    return _file_kind(frame.file)[0]


def is_third_party(frame: Frame) -> bool:
    """True for frames of installed packages (site-packages, dist-packages)."""
    return _file_kind(frame.file)[1]


def user_frame(stack: Sequence[Frame]) -> Frame | None:
    """The innermost frame of the program's own code in ``stack`` (innermost first), else
    of third-party code, else the innermost frame that is not pyflight's, else None."""
    kind = _file_kind
    for frame in stack:
        library, third_party, _ = kind(frame.file)
        if not library and not third_party:
            return frame
    for frame in stack:
        if not kind(frame.file)[0]:
            return frame
    for frame in stack:
        _, _, ours = library_third_ours = kind(frame.file)
        if not (ours and library_third_ours[0]):
            return frame
    return stack[0] if stack else None


#: (function, file) of libraries' own threads that wait in C for their next event: a
#: gRPC server's polling thread, a gRPC channel's spin thread for a streaming call. Off
#: the CPU there, they are idle, as a thread pool's worker between jobs is.
_LIBRARY_IDLE_LOOPS = (
    ("_serve", "/grpc/_server.py"),
    ("_run_channel_spin_thread.<locals>.channel_spin", "/grpc/_channel.py"),
)


def at_one_of(frame: Frame, places: Iterable[tuple[str, str]]) -> bool:
    """``frame`` is one of ``places``: (qualified function, how its file's path ends)."""
    file = frame.file.replace("\\", "/")
    return any(frame.function == name and file.endswith(end) for name, end in places)


def untraced_wait_site(stack: Sequence[Frame]) -> tuple[Frame | None, Frame | None]:
    """Where a thread found off-CPU outside any traced call waited: the innermost frame
    of the program's own code, and the call it made (the standard library's, or a
    third-party library's: ``grpc``'s blocking call, a database driver's ``execute``),
    if it made one; with no program frame, the innermost third-party frame and the
    standard-library call it made. (None, None) for a stack of standard-library code
    only (a library's own thread, idle between jobs), for a library's own thread in its
    idle loop (``_LIBRARY_IDLE_LOOPS``: gRPC's server thread), and for an event loop
    running its own code (uvloop, in C, waiting for events: idle)."""
    if not stack or runs_an_event_loop(stack[0]):
        return None, None
    for i, frame in enumerate(stack):
        library, third_party, _ = _file_kind(frame.file)
        if not library and not third_party:
            return frame, (stack[i - 1] if i else None)
    if any(at_one_of(frame, _LIBRARY_IDLE_LOOPS) for frame in stack):
        return None, None  # a library's own thread waiting for its next event
    if not is_library(stack[0]):
        return stack[0], None
    where = user_frame(stack)
    if where is None or is_library(where):
        return None, None
    return where, stack[list(stack).index(where) - 1]


#: Standard-library calls in which a thread waits for something the user knows by another
#: name than the call it blocks in: ``subprocess.run(..., capture_output=True)`` waits in
#: a ``selectors`` select on the child's pipes (a SELECT block), ``Popen.wait(timeout)``
#: in ``time.sleep`` (SLEEP). (file name, qualified function) -> (what, the call named).
_WAITS_FOR: dict[tuple[str, str], tuple[str, str, str]] = {
    ("subprocess.py", "Popen.communicate"): ("a subprocess", "communicate", "subprocess"),
    ("subprocess.py", "Popen._communicate"): ("a subprocess", "communicate", "subprocess"),
    ("subprocess.py", "Popen.wait"): ("a subprocess", "wait", "subprocess"),
    ("subprocess.py", "Popen._wait"): ("a subprocess", "wait", "subprocess"),
}


class LibraryWait(NamedTuple):
    """A wait named in the user's terms: ``what`` ("waiting for a subprocess
    (communicate)") and ``site``, the program's frame that called into the library (None
    when the stack holds library code only: ``pool.submit(subprocess.run, ...)``)."""

    what: str
    site: Frame | None
    #: A word for it, a table's column: "subprocess".
    thing: str = ""


@functools.lru_cache(maxsize=4096)
def library_wait(stack: tuple[Frame, ...]) -> LibraryWait | None:
    """What a thread blocked with ``stack`` (innermost first) waited for, when the
    standard-library frames inner to the first frame outside it (the program's, or a
    third-party library's: the calling line) include a call of ``_WAITS_FOR``; the
    outermost of them names it (``run`` -> ``communicate`` -> ``wait``: communicate).
    None otherwise (the reason, ``select``, says it then)."""
    found: tuple[str, str, str] | None = None
    site: Frame | None = None
    for frame in stack:
        if not is_library(frame):
            site = frame
            break
        name = frame.file.replace("\\", "/").rpartition("/")[2]
        found = _WAITS_FOR.get((name, frame.function), found)
    if found is None:
        return None
    what, call, thing = found
    return LibraryWait(f"waiting for {what} ({call})", site, thing)


def wait_name(reason: enum.Enum | None, stack: tuple[Frame, ...]) -> str:
    """A blocked interval's wait in the user's words: the library call it waited in
    (``library_wait``: "waiting for a subprocess (communicate)"), else its reason's
    name (``select``, ``lock``), else "blocked"."""
    waited = library_wait(stack) if stack else None
    if waited is not None:
        return waited.what
    return reason.name.lower() if reason is not None else "blocked"


def short_file(path: str) -> str:
    parts = re.split(r"[/\\]", path)
    return "/".join(parts[-2:]) if len(parts) > 2 else path


def top_frame(weights: Counter[Frame] | dict[Frame, float]) -> Frame | None:
    if not weights:
        return None
    return max(weights.items(), key=lambda kv: (kv[1], kv[0].function))[0]


def by_function(weights: dict[Frame, float]) -> tuple[Frame | None, float]:
    """Sum weights per function; return the heaviest line of the heaviest function."""
    per_function: dict[tuple[str, str], float] = defaultdict(float)
    for frame, weight in weights.items():
        per_function[(frame.function, frame.file)] += weight
    if not per_function:
        return None, 0.0
    key = max(per_function, key=lambda k: per_function[k])
    lines = {f: w for f, w in weights.items() if (f.function, f.file) == key}
    # line 0 (a frame caught between instructions, e.g. by the pure-Python sampler) names
    # no line: any real line of the function is a better culprit
    known = {f: w for f, w in lines.items() if f.line > 0}
    return top_frame(known or lines), per_function[key]


LOOP_FRAMES = ("_run_once", "Handle._run", "run_forever", "_run")
#: Frames through which a thread runs an event loop: asyncio's, and ``Runner.run`` /
#: ``run_until_complete`` above a loop written in C (uvloop: no frame of its own).
_LOOP_RUNNERS = (*LOOP_FRAMES, "Runner.run", "run_until_complete")


def runs_an_event_loop(frame: Frame) -> bool:
    """``frame`` runs an event loop: asyncio's (``asyncio.run``, ``Runner.run``, a loop's
    ``run_forever`` / ``run_until_complete`` / ``_run_once``), or uvloop's ``run``. Frames
    inner to it are a step of that loop; a stack whose innermost frame it is has no
    Python code running (the loop's own code in C: uvloop waiting for events)."""
    if frame.file.replace("\\", "/").endswith(("/asyncio/runners.py", "/uvloop/__init__.py")):
        return True
    return frame.function.endswith(_LOOP_RUNNERS) and "asyncio" in frame.file


def in_loop_machinery(stack: Sequence[Frame], frame: Frame) -> bool:
    """True if a frame running an event loop is inner to ``frame`` in ``stack``
    (innermost first): the sample was in the loop's own work (selecting, scheduling,
    uvloop's C code), not in ``frame``'s, which only started the loop (``asyncio.run``,
    ``uvicorn.run`` at a module's top level)."""
    for f in stack:
        if f is frame:
            return False
        if runs_an_event_loop(f):
            return True
    return False


def step_frame(stack: Sequence[Frame]) -> Frame | None:
    """The innermost user frame *inside* an event-loop step: frames outer to asyncio's
    ``_run_once`` / ``Handle._run`` (``main``, ``asyncio.run``) are not the step's."""
    fallback = None
    for frame in stack:
        if frame.function.endswith(LOOP_FRAMES) and "asyncio" in frame.file:
            return fallback
        if not is_library(frame):
            if not THIRD_PARTY_RE.search(frame.file):
                return frame
            fallback = fallback or frame
    return fallback


def frame_label(frame: Frame) -> str:
    """``function (file:line)``, with ``;`` (the folded separator) made harmless."""
    return f"{frame.function} ({frame.file}:{frame.line})".replace(";", ":").replace("\n", " ")
