"""Case 3 (issue 10): an operation that is slow on every call and takes most of the time
is a warning naming it and its culprit line; the terminal report has a latency table."""

from __future__ import annotations

from pathlib import Path

import pytest

from programs import findings_of, record_named, top_warning
from pyflight.analysis.rules import WARNING
from pyflight.format.reader import loads
from pyflight.report import analyze
from pyflight.report.text import render

# program -> (operation name, culprit function or None when the trace cannot know it)
PLANTED = {
    "slow_route_wsgi": ("GET /report/{year}", "load_report_rows"),
    "slow_route_asyncio": ("GET /inventory/{sku}", None),
    "slow_operation_threads": ("invoice", "render_invoice_pdf"),
}
HEALTHY = ["healthy_service_wsgi", "healthy", "healthy_asyncio"]


@pytest.mark.parametrize("program", sorted(PLANTED))
def test_slow_operation_is_a_top_warning(program: str, tmp_path: Path) -> None:
    name, culprit = PLANTED[program]
    findings = findings_of(record_named(program, tmp_path))
    finding = top_warning(findings, "slow-operations")
    assert finding.evidence["name"] == name
    assert name in finding.title
    if culprit is not None:
        assert finding.culprit is not None and finding.culprit.function == culprit
        assert "problem_programs" in finding.culprit.file


@pytest.mark.parametrize("program", HEALTHY)
def test_fast_operations_get_no_warning(program: str, tmp_path: Path) -> None:
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "slow-operations" and f.score >= WARNING]
    assert not [f for f in findings if f.score >= WARNING], [(f.rule, f.title) for f in findings]


def test_terminal_report_has_a_latency_table(tmp_path: Path) -> None:
    path = record_named("slow_route_wsgi", tmp_path)
    text = render(analyze(loads(path.read_bytes())))
    table = text.split("Latency by route / task / region")[1].split("\n\n")[0].splitlines()
    header = table[1].split()
    assert header[:9] == ["operation", "kind", "count", "p50", "ms", "p90", "ms", "p99", "ms"]
    rows = {line.split()[1]: line.split() for line in table[2:]}
    report_row = rows["/report/{year}"]
    health_row = rows["/health"]
    assert report_row[3] == "10" and health_row[3] == "30"
    # the slow route is first (largest share) and its median is the planted ~250 ms
    assert table[2].split()[1] == "/report/{year}"
    assert 200 <= float(report_row[4].replace(",", "")) < 2000
    assert float(health_row[4].replace(",", "")) < float(report_row[4].replace(",", ""))


def test_html_report_has_the_latency_table(tmp_path: Path) -> None:
    from pyflight.report.html import render as render_html

    path = record_named("slow_route_asyncio", tmp_path)
    page = render_html(analyze(loads(path.read_bytes())))
    section = page.split("<h2>Latency of user tasks and regions</h2>")[1].split("<h2>")[0]
    rows = section.split("<tr>")[2:]
    assert "GET /inventory/{sku}" in rows[0]  # the operation covering most of the window first
    assert any("GET /price/{sku}" in row for row in rows[1:])
    assert '<td class="n">8</td>' in rows[0]
