"""Rules written while ``findings.py`` is being split into ``analysis/rules/``: they are
registered into ``findings.RULES`` here until they move to their own modules there."""

from __future__ import annotations

from pyflight.analysis import findings
from pyflight.analysis.busy_poll import rule_busy_poll
from pyflight.analysis.gil_hog import rule_gil_hog
from pyflight.analysis.library_waits import rule_library_waits
from pyflight.analysis.loop_many_steps import rule_loop_many_steps
from pyflight.analysis.slow_operations import rule_slow_operations
from pyflight.analysis.stalled_holder import rule_stalled_holder

findings.RULES.setdefault("slow-operations", rule_slow_operations)
findings.RULES.setdefault("loop-blocked-steps", rule_loop_many_steps)
findings.RULES.setdefault("busy-poll", rule_busy_poll)
findings.RULES.setdefault("library-wait", rule_library_waits)
findings.RULES.setdefault("stalled-holder", rule_stalled_holder)
findings.RULES.setdefault("gil-hog", rule_gil_hog)
