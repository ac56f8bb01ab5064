"""Findings: scored rules that name a problem, its culprit, the evidence and what to do.

One module per rule, each declaring a ``RULE`` (``base.Rule``: its name and the ids it
emits). ``find(model)`` runs every rule of ``RULES`` and returns the findings, highest score
first. Scores are 0-100 as in JDK Mission Control: >= 75 is a warning, >= 25 is
information, below that the finding is only kept for ``--json``. How each rule scores is
documented in ``docs/report.md``; the layout in ``docs/internals.md``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pyflight.analysis.queries import Queries
from pyflight.analysis.rules import (
    barrier_straggler,
    busy_poll,
    cpu_hotspot,
    data_loss,
    deadlock,
    gc_pauses,
    gil_hog,
    io_wait,
    library_waits,
    lock_contention,
    loop_blocked,
    loop_starved,
    n_plus_one,
    pool_saturation,
    queue,
    slow_operations,
    slow_tasks,
    stalled_holder,
    untraced_wait,
)
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import INFO, MIN_SCORE, WARNING, Culprit, Finding, Moment, severity

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = ["INFO", "RULES", "WARNING", "Culprit", "Finding", "Moment", "Rule", "find", "rule_ids", "severity"]

#: Every rule by name, in the order they run.
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        loop_blocked.RULE,
        loop_starved.RULE,
        deadlock.RULE,
        lock_contention.RULE,
        queue.RULE,
        gc_pauses.RULE,
        cpu_hotspot.RULE,
        io_wait.RULE,
        pool_saturation.RULE,
        slow_tasks.RULE,
        untraced_wait.RULE,
        data_loss.RULE,
        slow_operations.RULE,
        busy_poll.RULE,
        library_waits.RULE,
        stalled_holder.RULE,
        gil_hog.RULE,
        n_plus_one.RULE,
        barrier_straggler.RULE,
    )
}


def rule_ids() -> list[str]:
    """Every id a finding can carry (besides ``rule-error``)."""
    return [rule_id for rule in RULES.values() for rule_id in rule.ids]


def _select(names: Iterable[str]) -> dict[str, set[str] | None]:
    """Rule name -> the ids wanted of it (None: all it emits). A name is an id a rule emits
    (only those findings: ``slow-tasks`` without ``slow-regions``) or a rule's name (all
    of them: ``queue``); anything else raises KeyError."""
    selected: dict[str, set[str] | None] = {}
    for name in names:
        owner = next((rule for rule in RULES.values() if name in rule.ids), None)
        if owner is None:
            if name not in RULES:
                raise KeyError(name)
            selected[name] = None
            continue
        wanted = selected.get(owner.name, set())
        if wanted is not None:
            wanted.add(name)
            selected[owner.name] = wanted
    return selected


def find(model: Model, *, rules: Iterable[str] | None = None, strict: bool = False) -> list[Finding]:
    """Run the rules on ``model``; findings sorted by score, highest first.

    ``rules`` names rules or the ids they emit (``queue-backlog`` runs the queue rule and
    keeps its backlog findings). A rule that fails is reported as a ``rule-error`` finding
    (score 0) unless ``strict``.
    """
    selected: dict[str, set[str] | None] = dict.fromkeys(RULES) if rules is None else _select(rules)
    findings: list[Finding] = []
    # the model holds millions of objects: full collections while the rules allocate
    # would cost more than the rules themselves
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name, wanted in selected.items():
            found = _run_rule(model, name, strict)
            findings.extend(f for f in found if wanted is None or f.rule in wanted or f.rule == "rule-error")
    finally:
        if gc_was_enabled:
            gc.enable()
        Queries.forget(model)
    findings = [f for f in findings if f.score >= MIN_SCORE or f.rule == "rule-error"]
    findings.sort(key=lambda f: (-f.score, f.rule, f.title))
    return findings


def _run_rule(model: Model, name: str, strict: bool) -> list[Finding]:
    try:
        return RULES[name](model)
    except Exception as exc:
        if strict:
            raise
        return [
            Finding(
                rule="rule-error",
                score=0,
                title=f"Rule {name} failed: {type(exc).__name__}: {exc}",
                evidence={"rule": name},
            )
        ]
