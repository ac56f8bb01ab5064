"""What a rule is: a name, the finding ids it emits, and a function of the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.analysis.rules.finding import Finding


@dataclass(frozen=True)
class Rule:
    """One rule: ``name`` is its registry key; ``ids`` every ``Finding.rule`` it can emit
    (the queue rule emits ``queue-backlog`` and ``queue-starved``), so ``find(rules=...)``
    accepts either."""

    name: str
    ids: tuple[str, ...]
    run: Callable[[Model], list[Finding]]

    def __call__(self, model: Model) -> list[Finding]:
        return self.run(model)
