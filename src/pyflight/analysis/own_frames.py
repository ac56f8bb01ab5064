"""Which frames of a recorded stack are the program's, and which are pyflight's own.

Stacks sampled while the program blocks hold pyflight's hook frames innermost, and under
``pyflight run`` the launcher's frames outermost: neither is the program's code, so the
model keeps stacks without them (``program_stack``).
"""

from __future__ import annotations

import os
from typing import Any

from pyflight.format.reader import Frame

Stack = tuple[Frame, ...]

#: Frames of pyflight's own hooks (a wrapper around Condition.wait, time.sleep, ...)
#: sit innermost in stacks sampled while the program blocks: they are not the program's.
_OWN_FRAME_DIRS = tuple(f"{sep}pyflight{sep}{d}{sep}" for sep in ("/", "\\") for d in ("sources", "triggers"))
#: Outermost frames that only start the program: ``pyflight run``'s own (the console
#: script, cli.py, commands/run.py, run.py, __main__.py) and runpy's. User code starts below them.
_LAUNCHER_FILES = tuple(
    f"{sep}{path}"
    for sep in ("/", "\\")
    for path in (
        f"pyflight{sep}cli.py",
        f"pyflight{sep}commands{sep}__init__.py",
        f"pyflight{sep}commands{sep}run.py",
        f"pyflight{sep}run.py",
        f"pyflight{sep}__main__.py",
        f"bin{sep}pyflight",
        "runpy.py",
    )
)
_own_stripped: dict[int, tuple[Stack, Stack]] = {}


#: pyflight's package directory here (a trace read elsewhere falls back on _OWN_FRAME_DIRS).
_OWN_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_launcher(file: str) -> bool:
    return file.endswith(_LAUNCHER_FILES) or file == "<frozen runpy>"


#: Shipped with pyflight but the program's code when it runs (``pyflight demo``).
_PROGRAM_FILES = (f"{_OWN_PACKAGE}demo.py",)


def _is_own(file: str) -> bool:
    if file.startswith(_OWN_PACKAGE):
        return not file.startswith(_PROGRAM_FILES)
    return _is_launcher(file) or any(d in file for d in _OWN_FRAME_DIRS)


def program_stack(value: Any) -> Stack:
    """The program's part of a stack (cached per stack object): without the launcher's
    outermost frames (``pyflight run``, runpy) and pyflight's own wrapper frames (its
    hooks, its thread bootstrap). A stack of pyflight's own work on a program thread
    (set-up, the write at exit, its ``atexit`` handlers, which no program frame calls)
    becomes empty: none of it is the program's."""
    if not isinstance(value, tuple) or not value:
        return ()
    cached = _own_stripped.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    end = len(value)
    while end > 0 and _is_launcher(value[end - 1][1]):
        end -= 1
    stripped: Stack
    if end < len(value) and (end == 0 or _is_own(value[end - 1][1])):
        stripped = ()  # called by the launcher, not through the program's code
    else:
        stripped = tuple(f for f in value[:end] if not _is_own(f[1]))
        if len(stripped) == len(value):
            stripped = value
    _own_stripped[id(value)] = (value, stripped)
    return stripped


def clear_cache() -> None:
    """Forget the stacks seen (the cache holds a trace's stacks only for one build)."""
    _own_stripped.clear()
