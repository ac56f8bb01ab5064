"""Taking a snapshot on behalf of an endpoint, a signal or a trigger.

Shared by every way out so they all name files, mark the trace with the reason and
respect a directory quota the same way.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any

from pyflight.core import backend
from pyflight.core.encoding import MAGIC
from pyflight.core.events import Kind
from pyflight.errors import RecorderError
from pyflight.format.writer import TEMP_PREFIX, TEMP_SUFFIX
from pyflight.recorder import FlightRecorder, active_recorder

FILE_PREFIX = "pyflight-"
FILE_SUFFIX = ".pyfl"
_REASON_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def require_recorder(recorder: FlightRecorder | None = None) -> FlightRecorder:
    """The given recorder, or the running one; RecorderError if there is none."""
    rec = recorder if recorder is not None else active_recorder()
    if rec is None or not rec.enabled:
        raise RecorderError("no FlightRecorder is running in this process")
    return rec


def mark(reason: str, detail: str = "") -> None:
    """Put the reason for a snapshot into the trace itself (a TRIGGER event)."""
    try:
        backend.record(Kind.TRIGGER, reason, detail)
    except Exception:
        pass


def snapshot_bytes(recorder: FlightRecorder | None = None, reason: str = "api", detail: str = "") -> bytes:
    """A fresh snapshot in memory. Raises SnapshotInProgress if one is being written."""
    rec = require_recorder(recorder)
    mark(reason, detail)
    buffer = io.BytesIO()
    rec.write_to(buffer, reason=reason)
    return buffer.getvalue()


def snapshot_filename(reason: str, when: float | None = None, pid: int | None = None) -> str:
    """``pyflight-<UTC time>-<pid>-<reason>.pyfl``: says when and why, sorts by time."""
    moment = time.time() if when is None else when
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
    safe = _REASON_CHARS.sub("_", reason).strip("_") or "snapshot"
    return f"{FILE_PREFIX}{stamp}-{os.getpid() if pid is None else pid}-{safe}{FILE_SUFFIX}"


#: Exactly the names ``snapshot_filename`` gives: the quota removes nothing else.
SNAPSHOT_NAME = re.compile(r"pyflight-\d{8}T\d{6}\.\d{3}Z-\d+-[A-Za-z0-9_.-]+\.pyfl")
#: Temporaries of ``write_file_atomically``: ``.pyflight-<pid>-<hex>.tmp``.
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-[0-9a-f]+" + re.escape(TEMP_SUFFIX))
#: A temporary younger than this may be one being renamed into place right now.
STALE_TEMP_AGE_S = 60.0


def is_our_snapshot(path: Path) -> bool:
    """A file pyflight's triggers wrote: the exact snapshot name and the trace magic.
    A user's ``pyflight-notes.pyfl``, a run's ``pyflight-<pid>.pyfl`` exit file or a
    child's ``out-<pid>.pyfl`` are not."""
    if not SNAPSHOT_NAME.fullmatch(path.name):
        return False
    try:
        with open(path, "rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def sweep_stale_temporaries(directory: str | os.PathLike[str], now: float | None = None) -> list[Path]:
    """Remove temporaries left by writers that died mid-write (their pid is gone and the
    file is over a minute old); returns what was removed."""
    moment = time.time() if now is None else now
    removed = []
    for path in Path(directory).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        match = TEMP_NAME.fullmatch(path.name)
        if match is None or _pid_alive(int(match[1])):
            continue
        try:
            if moment - path.stat().st_mtime < STALE_TEMP_AGE_S:
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def enforce_quota(
    directory: str | os.PathLike[str], quota_bytes: int, keep: Path | None = None
) -> list[Path]:
    """Remove the oldest pyflight snapshot files until the directory's total fits the quota.

    Only files that are provably our snapshots (``is_our_snapshot``) are ever removed, and
    ``keep`` never is; temporaries of dead writers are swept first, live writers'
    temporaries count toward the total.
    """
    removed = sweep_stale_temporaries(directory)
    files = sorted(
        (p for p in Path(directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p != keep and is_our_snapshot(p)),
        key=lambda p: (_mtime(p), p.name),
    )
    temporaries = [
        p for p in Path(directory).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if TEMP_NAME.fullmatch(p.name)
    ]
    total = sum(_size(p) for p in [*files, *temporaries]) + (_size(keep) if keep is not None else 0)
    for path in files:
        if total <= quota_bytes:
            break
        size = _size(path)
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def write_snapshot_file(
    directory: str | os.PathLike[str],
    reason: str,
    *,
    detail: str = "",
    recorder: FlightRecorder | None = None,
    quota_bytes: int | None = None,
) -> Path:
    """Write a snapshot into ``directory`` under a name that says when and why.

    The file is written atomically with mode 0600; with a quota, the oldest pyflight
    files in the directory are removed afterwards until the total fits.
    """
    rec = require_recorder(recorder)
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / snapshot_filename(reason)
    mark(reason, detail)
    rec.write_to(path, reason=reason)
    if quota_bytes is not None:
        enforce_quota(directory, quota_bytes, keep=path)
    return path


def status(recorder: FlightRecorder | None = None) -> dict[str, Any]:
    """What /debug/pyflight/status returns: window, bytes held, sources, data loss."""
    rec = active_recorder() if recorder is None else recorder
    if rec is None:
        return {"enabled": False}
    info = rec.stats()
    info["sources"] = {
        source.name: ("disabled: " + source.disabled_reason) if source.disabled_reason else "on"
        for source in rec.sources
    }
    info["pid"] = os.getpid()
    return info
