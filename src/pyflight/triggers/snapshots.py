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
from pyflight.core.events import Kind
from pyflight.errors import RecorderError
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


def enforce_quota(
    directory: str | os.PathLike[str], quota_bytes: int, keep: Path | None = None
) -> list[Path]:
    """Remove the oldest pyflight snapshot files until the directory's total fits the quota.

    Only files named like our snapshots are ever removed; ``keep`` never is.
    """
    files = sorted(
        (p for p in Path(directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p.is_file() and p != keep),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    total = sum(p.stat().st_size for p in files) + (keep.stat().st_size if keep and keep.exists() else 0)
    removed = []
    for path in files:
        if total <= quota_bytes:
            break
        size = path.stat().st_size
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
