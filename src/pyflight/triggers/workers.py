"""Pre-fork servers: the recorded processes below a master (gunicorn's and uvicorn's
workers, Celery's pool) and one snapshot of each.

Every worker started under ``pyflight run`` has its own recorder and control socket
(see ``control``). Gathering asks each of them over that socket, from whoever gathers
(``pyflight snapshot MASTER_PID --workers``, or the master's ``--serve`` endpoint with
``?workers=1``); a worker that cannot answer is reported, never fatal to the others.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from dataclasses import dataclass

from pyflight.triggers.control import ControlError, candidate_dirs, request_snapshot


@dataclass
class WorkerSnapshot:
    """One process's snapshot, or why there is none."""

    pid: int
    data: bytes | None = None
    error: str | None = None


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process we can see (Linux /proc)."""
    parents: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return parents
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(name)] = int(fields[1])
    return parents


def _has_control_channel(pid: int) -> bool:
    return any(os.path.exists(directory / f"{pid}.sock") for directory in candidate_dirs())


def recorded_descendants(pid: int | None = None) -> list[int]:
    """Processes below ``pid`` (default: this one) that answer ``pyflight snapshot``,
    children first. Helpers that are not recorded (multiprocessing's resource tracker)
    are left out; their own recorded children are not."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    level = sorted(children.get(root, []))
    while level:
        found += [child for child in level if _has_control_channel(child)]
        level = sorted(grandchild for child in level for grandchild in children.get(child, []))
    return found


def gather(pids: list[int], timeout: float = 30.0) -> list[WorkerSnapshot]:
    """A snapshot of each of ``pids`` over its control channel (one after the other,
    within ``timeout`` seconds in all)."""
    deadline = time.monotonic() + timeout
    results = []
    for pid in pids:
        left = deadline - time.monotonic()
        if left <= 0:
            results.append(WorkerSnapshot(pid, error=f"no time left after {timeout:g} s"))
            continue
        try:
            results.append(WorkerSnapshot(pid, data=request_snapshot(pid, timeout=left)))
        except ControlError as exc:
            results.append(WorkerSnapshot(pid, error=str(exc)))
    return results


def zip_archive(snapshots: list[WorkerSnapshot]) -> bytes:
    """One download: ``pyflight-<pid>.pyfl`` per snapshot, and ``errors.txt`` saying
    which processes could not answer and why."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        errors = []
        for snapshot in snapshots:
            if snapshot.data is not None:
                archive.writestr(f"pyflight-{snapshot.pid}.pyfl", snapshot.data)
            else:
                errors.append(f"{snapshot.pid}: {snapshot.error}\n")
        if errors:
            archive.writestr("errors.txt", "".join(errors))
    return buffer.getvalue()
