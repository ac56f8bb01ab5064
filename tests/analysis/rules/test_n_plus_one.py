"""Case 8 (issue 10): a request that runs one query per row (an N+1) is a warning naming
the route, the query count, the repeated statement and the view's own line (not the
driver's execute), with the ORM fix; the queries are recorded by the dbapi source."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import pyflight
from programs import findings_of, record_named, top_warning
from pyflight.analysis import build
from pyflight.analysis.rules import WARNING
from pyflight.analysis.rules.n_plus_one import db_queries
from pyflight.format.reader import loads
from pyflight.sources.dbapi import normalize_sql

# program -> (unit in the title, repeated statement fragment, culprit function, culprit line's text)
PLANTED = {
    "django_n_plus_one": ("GET /books/", 'WHERE "shop_author"."id" = ?', "book_list", "book.author.name"),
    "sqlite_n_plus_one_threads": ("nightly-invoices", "WHERE order_id = ?", "order_total", "conn.execute"),
}
HEALTHY = ["healthy_django", "healthy_sqlite_threads"]


@pytest.mark.parametrize("program", sorted(PLANTED))
def test_n_plus_one_is_a_top_warning_at_the_views_line(program: str, tmp_path: Path) -> None:
    if program.startswith("django"):
        pytest.importorskip("django")
    unit, statement, function, line_text = PLANTED[program]
    findings = findings_of(record_named(program, tmp_path))
    finding = top_warning(findings, "n-plus-one")
    assert unit in finding.title and statement in finding.evidence["statement"]
    assert finding.evidence["repeats_per_call"] >= 500
    assert finding.evidence["queries_per_call"] > finding.evidence["repeats_per_call"]
    assert finding.culprit is not None and finding.culprit.function == function
    source_line = Path(finding.culprit.file).read_text().splitlines()[finding.culprit.line - 1]
    assert line_text in source_line
    assert "select_related" in finding.hint
    # the raw evidence: one moment per call, on the thread and task that ran the queries
    assert len(finding.moments) == finding.evidence["calls"] >= 2
    for moment in finding.moments:
        assert moment.duration_ns > 0 and moment.at_s >= 0
        assert moment.task == unit and moment.thread


@pytest.mark.parametrize("program", HEALTHY)
def test_batched_queries_get_no_n_plus_one(program: str, tmp_path: Path) -> None:
    if program.startswith("django"):
        pytest.importorskip("django")
    findings = findings_of(record_named(program, tmp_path))
    assert not [f for f in findings if f.rule == "n-plus-one"], [(f.rule, f.title) for f in findings]
    assert not [f for f in findings if f.score >= WARNING], [(f.rule, f.title) for f in findings]


def test_sqlite_queries_are_recorded_with_statement_and_callers_line() -> None:
    with pyflight.FlightRecorder() as rec:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        with conn:  # commits in C: recorded as COMMIT all the same
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
        conn.row_factory = sqlite3.Row
        assert dict(conn.execute("SELECT * FROM t WHERE id = 1").fetchone()) == {"id": 1, "name": "a"}
        conn.row_factory = None
        with pyflight.task("lookup"):
            cursor = conn.cursor()
            cursor.execute("SELECT name FROM t WHERE id = 2 AND name = 'b'")  # the line to name
            assert cursor.fetchone() == ("b",)
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("SELECT nope FROM t")
        buf = io.BytesIO()
        rec.write_to(buf)
    assert isinstance(conn, sqlite3.Connection)
    model = build(loads(buf.getvalue()))
    queries = {q.statement: q for q in db_queries(model)}
    assert set(queries) >= {
        "INSERT INTO t VALUES (...)",
        "COMMIT",
        "SELECT name FROM t WHERE id = ? AND name = ?",
    }
    assert "SELECT nope FROM t" in queries  # a failing query is recorded too
    lookup = queries["SELECT name FROM t WHERE id = ? AND name = ?"]
    assert lookup.site is not None and lookup.site.file == __file__
    assert "the line to name" in Path(__file__).read_text().splitlines()[lookup.site.line - 1]
    assert model.user_tasks[lookup.task].name == "lookup"
    assert all(q.end >= q.start for q in queries.values())


def test_report_lists_the_moments_a_finding_came_from(tmp_path: Path) -> None:
    path = record_named("sqlite_n_plus_one_threads", tmp_path)
    doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "pyflight", "report", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    finding = next(f for f in doc["findings"] if f["rule"] == "n-plus-one")
    threads = {m["thread"] for m in finding["moments"]}
    assert threads == {"invoicer-0", "invoicer-1"}
    assert all(m["task"] == "nightly-invoices" and m["what"].startswith("800 of") for m in finding["moments"])
    html_path = tmp_path / "report.html"
    subprocess.run(
        [sys.executable, "-m", "pyflight", "report", str(path), "--html", str(html_path)], check=True
    )
    html = html_path.read_text()
    assert "moment(s) it was derived from" in html and "invoicer-1" in html


def test_connections_after_stop_are_plain_and_unrecorded() -> None:
    with pyflight.FlightRecorder():
        pass
    conn = sqlite3.connect(":memory:")
    assert type(conn) is sqlite3.Connection
    assert sqlite3.connect is sqlite3.dbapi2.connect


@pytest.mark.parametrize(
    ("sql", "normal"),
    [
        ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
        ("select a from t where name = 'o''brien' and x = %s", "select a from t where name = ? and x = ?"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (...)"),
        ("SELECT * FROM t WHERE id IN (%s, %s)", "SELECT * FROM t WHERE id IN (...)"),
        ("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s)", "INSERT INTO t (a, b) VALUES (...), ..."),
        ("SELECT  *\n FROM t2 WHERE a = :name AND b = $1", "SELECT * FROM t2 WHERE a = ? AND b = ?"),
    ],
)
def test_statements_lose_their_values(sql: str, normal: str) -> None:
    assert normalize_sql(sql) == normal
