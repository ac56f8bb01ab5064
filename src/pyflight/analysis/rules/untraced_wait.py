"""Rule ``untraced-wait`` (docs/report.md explains its score)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.cpu import ASLEEP
from pyflight.analysis.model import State
from pyflight.analysis.rules._idle_reads import follows_messages
from pyflight.analysis.rules.base import Rule
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
from pyflight.analysis.frames import by_function, library_wait, short_file, untraced_wait_site
from pyflight.analysis.queries import (
    interval_ns,
    lifetime,
    samples_by_thread,
    seconds_since_start,
    thread_name,
    user_threads,
)
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of, stretches
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns

_PROCESS_HINT = (
    "These threads waited for {process}: the time went there, not to this process. See "
    "what it does (`pyflight run` records child processes too, each into its own file), "
    "run such waits concurrently rather than one after another, or give them a timeout."
)


def _other_process(call: Frame) -> str | None:
    """What a call waits for when it waits for another process: ``subprocess`` (a child
    to exit, its pipes), ``multiprocessing`` (a Queue, Pipe, Connection or pool result:
    data from another process), a gRPC stub's call (``grpc``'s channel: the server's
    answer, its wait in gRPC's C core); None for any other call."""
    path = call.file.replace("\\", "/")
    if path.endswith("/subprocess.py"):
        return "a subprocess"
    if "/multiprocessing/" in path:
        return "another process"
    if path.endswith("/grpc/_channel.py"):
        return "a gRPC server's answer"
    return None


def _waits_for_a_subprocess(stack: tuple[Frame, ...]) -> bool:
    """A thread blocked in a traced call (``select``) made by ``subprocess``: waiting for
    its child, as in ``waitpid``, which no hook sees (``run(..., capture_output=True)``
    selects on the child's pipes, ``check_output`` reads its one pipe: the same wait)."""
    waited = library_wait(stack)
    return waited is not None and waited.what.startswith("waiting for a subprocess")


def rule_untraced_wait(model: Model) -> list[Finding]:
    """Threads often found off-CPU inside user code that no hook saw block: an untraced
    lock (e.g. without the C core), the GIL, or a C extension waiting; and threads
    waiting for a subprocess, whether that wait is traced or not."""
    interval = interval_ns(model)
    weights: dict[Frame, float] = defaultdict(float)
    per_thread: Counter[int] = Counter()
    seen: list[tuple[int, int, Frame]] = []  # (thread, time, where) of each sample counted
    inside: dict[Frame, Counter[Frame]] = defaultdict(Counter)  # where -> the library call it made
    for thread in user_threads(model):
        for sample in samples_by_thread(model).get(thread.tid, ()):
            if sample.os_state not in ASLEEP or not sample.stack:
                continue
            if sample.state is not State.RUNNING and not (
                sample.state is State.BLOCKED and _waits_for_a_subprocess(sample.stack)
            ):
                continue
            where, callee = untraced_wait_site(sample.stack)
            if where is None:
                continue  # all library code: a library's own thread idle between jobs
            if follows_messages(sample.stack):
                continue  # waiting for a WebSocket's next push (websockets' sync client)
            # the wall time the sample covers, less its CPU: the interval is only the
            # sampler's last rate (the budget may have slowed it since most were taken)
            weights[where] += max(0, sample.span - sample.cpu) if sample.span else interval
            per_thread[thread.tid] += 1
            seen.append((thread.tid, sample.time, where))
            if callee is not None:
                inside[where][callee] += 1
    frame, frame_ns = by_function(weights)
    if frame is None or frame_ns < 100 * MS:
        return []
    calls: Counter[Frame] = Counter()
    for where, counts in inside.items():
        if (where.function, where.file) == (frame.function, frame.file):
            calls.update(counts)
    callee, callee_n = calls.most_common(1)[0] if calls else (None, 0)
    # named when most of the line's samples were inside one standard-library call
    library_call = callee if callee is not None and 2 * callee_n >= _samples_at(seen, frame) else None
    process = _other_process(library_call) if library_call is not None else None
    threads = [model.threads[tid] for tid in per_thread]
    life = sum(lifetime(t) for t in threads) or 1
    share = sum(weights.values()) / life
    score = clamp_score(ramp(share, [(0.1, 10), (0.2, 25), (0.5, 45), (0.8, 60)]))
    return [
        Finding(
            rule="untraced-wait",
            score=score,
            title=(
                f"Threads spent {fmt_ns(frame_ns)} off-CPU inside {frame.function} "
                + (f"waiting for {process} " if process else "in no traced call ")
                + (
                    f"(inside {library_call.function}, {short_file(library_call.file)}"
                    # a process is named only from a library call; its wait may be traced
                    + (")" if process else ": a wait in C that pyflight does not hook)")
                    if library_call is not None
                    else "(an untraced lock, the GIL or a C call)"
                )
            ),
            culprit=Culprit.of(frame),
            moments=moments_of(
                [
                    Moment(
                        seconds_since_start(model, start),
                        end - start,
                        thread_name(model, tid),
                        "",
                        f"found off-CPU in {frame.function} {n // interval} time(s), "
                        + (f"waiting for {process}" if process else "in no traced call"),
                    )
                    for tid, start, end, n in stretches(
                        [
                            (tid, max(model.start, t - interval), t, interval)
                            for tid, t, where in seen
                            if (where.function, where.file) == (frame.function, frame.file)
                        ],
                        interval // 2,
                    )
                ]
            ),
            evidence={
                "wait_ns": int(frame_ns),
                "wait_share": round(share, 4),
                "threads": sorted(t.name for t in threads),
                "samples": sum(per_thread.values()),
                **(
                    {"inside": f"{library_call.function} ({short_file(library_call.file)})"}
                    if library_call
                    else {}
                ),
                **({"waiting_for": process} if process else {}),
            },
            hint=(
                _PROCESS_HINT.format(process=process)
                if process
                else (
                    "The sampler found these threads waiting on the line named, outside any call "
                    "pyflight hooks. If it takes a lock created before the recorder started (or "
                    "without the C core), the lock is not traced; if it calls a C extension, that "
                    "call blocks. Start the recorder earlier or look at what the line waits for."
                )
            ),
        )
    ]


def _samples_at(seen: list[tuple[int, int, Frame]], frame: Frame) -> int:
    return sum(1 for _, _, where in seen if (where.function, where.file) == (frame.function, frame.file))


RULE = Rule("untraced-wait", ("untraced-wait",), rule_untraced_wait)
