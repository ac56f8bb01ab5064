"""Rule ``loop-blocked`` for event loops that are not asyncio's own (run by
``loop_blocked.RULE``): uvloop's steps and tasks cannot be recorded, but a coroutine
that makes a blocking call (``time.sleep``, a synchronous driver's socket read, a lock)
still blocks in a traced call, on the loop's thread, with the loop's runner (uvloop's
``run``, asyncio's ``Runner.run``) outer to it in its stack: the loop was blocked that
long. uvicorn picks uvloop by itself when it is installed, so this is where a sync call
in an async handler shows on such a service. CPU-heavy steps of such a loop are not seen
this way (the sampler alone cannot tell one long step from many short ones): cpu-hotspot
says when its hot function ran inside a loop's steps."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, is_library, runs_an_event_loop, user_frame
from pyflight.analysis.queries import lifetime, seconds_since_start, thread_name
from pyflight.analysis.rules._loop import LONG_STEP, WAIT_CALLS
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.loop_many_steps import MEDIUM_STEP, MIN_STEPS
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns

if TYPE_CHECKING:
    from pyflight.analysis.model import Block, Model
    from pyflight.format.reader import Frame

__all__ = ["rule_foreign_loop_blocked"]


def _in_a_step(block: Block) -> Frame | None:
    """The program's frame a block was made from, when it was made inside a step of an
    event loop (a loop runner frame outer to it); None otherwise."""
    for k, frame in enumerate(block.stack):
        if runs_an_event_loop(frame):
            site = user_frame(block.stack[:k]) if k else None
            return site if site is not None and not is_library(site) else None
    return None


def rule_foreign_loop_blocked(model: Model) -> list[Finding]:
    own = {loop.tid for loop in model.loops.values()}  # asyncio's loops: their steps say it
    found: dict[int, list[tuple[Block, Frame]]] = defaultdict(list)
    for b in model.blocks:
        if b.tid in own or b.end - b.start < MEDIUM_STEP or not b.stack:
            continue
        site = _in_a_step(b)
        if site is not None:
            found[b.tid].append((b, site))
    out: list[Finding] = []
    for tid, blocks in found.items():
        durations = [b.end - b.start for b, _ in blocks]
        worst_b = max(blocks, key=lambda bs: bs[0].end - bs[0].start)[0]
        worst = worst_b.end - worst_b.start
        if worst < LONG_STEP and len(blocks) < MIN_STEPS:
            continue  # a few medium waits: jitter, as for asyncio's loops
        thread = model.threads.get(tid)
        blocked = sum(durations)
        share = blocked / max(1, lifetime(thread) if thread is not None else model.end - model.start)
        weights: dict[Frame, float] = defaultdict(float)
        calls: Counter[str] = Counter()
        for b, site in blocks:
            weights[site] += b.end - b.start
            calls[WAIT_CALLS.get(b.reason, b.reason.name.lower())] += b.end - b.start
        culprit, _ = by_function(weights)
        call = calls.most_common(1)[0][0]
        score = clamp_score(
            ramp(worst / MS, [(20, 25), (100, 35), (250, 60), (500, 78), (1000, 88), (5000, 95)]),
            ramp(share, [(0.01, 30), (0.05, 60), (0.2, 85), (0.5, 95)]),
        )
        name = thread_name(model, tid)
        out.append(
            Finding(
                rule="loop-blocked",
                score=score,
                title=(
                    f"Event loop ({name}, not asyncio's own: uvloop) blocked {len(blocks)} times, "
                    f"up to {fmt_ns(worst)}, {fmt_ns(blocked)} in all, by a synchronous (blocking) "
                    f"call ({call})" + (f" in {culprit.function}" if culprit else "")
                ),
                culprit=Culprit.of(culprit),
                evidence={
                    "loop": "not asyncio's own",
                    "thread": name,
                    "blocking_calls": len(blocks),
                    "blocked_ns": blocked,
                    "blocked_share": round(share, 4),
                    "worst_ns": worst,
                    "worst_at_s": seconds_since_start(model, worst_b.start),
                    "call": call,
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, b.start),
                            b.end - b.start,
                            name,
                            "",
                            f"blocked the loop in {site.function} ({WAIT_CALLS.get(b.reason, 'a call')})",
                        )
                        for b, site in blocks
                    ]
                ),
                hint=(
                    "Nothing else runs on the loop while a coroutine blocks. Move the blocking "
                    "call off the loop (await an async equivalent, or `await "
                    "loop.run_in_executor(None, ...)` / `asyncio.to_thread(...)`). This loop is "
                    "not asyncio's own (uvloop), so its steps are not recorded: the traced "
                    "blocking calls made inside them are seen, and CPU spent in them shows as a "
                    "cpu-hotspot on the loop's thread; run on asyncio's loop to see every step "
                    "(`uvicorn --loop asyncio`)."
                ),
            )
        )
    return out
