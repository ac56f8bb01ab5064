"""``pyflight report``: findings first, then breakdown tables, top stacks; text, JSON, HTML.

``analyze(trace)`` (``pyflight.analysis.result``) builds everything once (a ``Report``); the
renderers in ``text``, ``json_report`` and ``html`` only format it.
"""

from __future__ import annotations

from pyflight.analysis.result import Report, analyze, summary

__all__ = ["Report", "analyze", "summary"]
