"""PostgreSQL through psycopg 3 and psycopg2, recorded by the dbapi source: each query with its
statement and the program's own line, and an N+1 named at the line that loops. A real
PostgreSQL server is started on a Unix socket in a temporary directory by ``pgserver``
(a PyPI package that ships the server; no wheel for 3.13 yet: skipped there)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyflight
from programs import findings_of, record_named, top_warning
from pyflight.analysis import build
from pyflight.analysis.rules.n_plus_one import Query, db_queries
from pyflight.format.reader import loads

psycopg = pytest.importorskip("psycopg", reason="psycopg (the `test` extra) is not installed")
pgserver = pytest.importorskip(
    "pgserver", reason="pgserver (a PostgreSQL server for tests) has no wheel for this Python"
)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server of our own for these tests: its connection URI."""
    try:
        server = pgserver.get_server(str(tmp_path_factory.mktemp("pgdata")), cleanup_mode="stop")
    except Exception as exc:  # e.g. a sandbox without shared memory for PostgreSQL
        pytest.skip(f"pgserver could not start PostgreSQL here: {exc}")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def test_psycopg_queries_are_recorded_with_statement_and_callers_line(postgres: str) -> None:
    with pyflight.FlightRecorder() as rec:
        with psycopg.connect(postgres) as conn:
            conn.execute("CREATE TEMP TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            with conn.cursor() as cursor:
                cursor.executemany("INSERT INTO t VALUES (%s, %s)", [(1, "a"), (2, "b")])
            with pyflight.task("lookup"):
                sql = "SELECT name FROM t WHERE id = %s AND name = 'b'"
                row = conn.execute(sql, (2,)).fetchone()  # the line
            assert row == ("b",)
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT nope FROM t")
        buf = io.BytesIO()
        rec.write_to(buf)
    model = build(loads(buf.getvalue()))
    queries = {q.statement: q for q in db_queries(model)}
    assert "INSERT INTO t VALUES (...)" in queries, sorted(queries)
    assert "SELECT nope FROM t" in queries  # a failing query is recorded too
    lookup = queries["SELECT name FROM t WHERE id = ? AND name = ?"]
    assert lookup.site is not None and lookup.site.file == __file__
    assert "# the line" in Path(__file__).read_text().splitlines()[lookup.site.line - 1]
    assert model.user_tasks[lookup.task].name == "lookup"
    assert lookup.end >= lookup.start


def test_psycopg_async_queries_of_concurrent_tasks_are_recorded_each_in_its_task(postgres: str) -> None:
    """AsyncCursor: awaited queries of two requests running at once on one event loop,
    each counted in its own pyflight.task, at the program's own line."""
    import asyncio

    async def request(name: str, n: int) -> None:
        async with await psycopg.AsyncConnection.connect(postgres) as conn:
            with pyflight.task(name):
                for i in range(n):
                    await conn.execute("SELECT %s::int + 1", (i,))  # the async line
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(request("first", 5), request("second", 7)), 60)

    with pyflight.FlightRecorder() as rec:
        asyncio.run(main())
        buf = io.BytesIO()
        rec.write_to(buf)
    model = build(loads(buf.getvalue()))
    per_task: dict[str, int] = {}
    for q in db_queries(model):
        if q.statement.startswith("SELECT ?::int"):
            assert q.site is not None and q.site.file == __file__
            assert "# the async line" in Path(__file__).read_text().splitlines()[q.site.line - 1]
            name = model.user_tasks[q.task].name
            per_task[name] = per_task.get(name, 0) + 1
            assert q.end >= q.start
    assert per_task == {"first": 5, "second": 7}


def test_n_plus_one_on_postgres_is_a_warning_at_the_loops_line(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYFLIGHT_TEST_PG_URI", postgres)
    findings = findings_of(record_named("postgres_n_plus_one", tmp_path))
    finding = top_warning(findings, "n-plus-one")
    assert "monthly-report" in finding.title
    assert "WHERE customer_id = ?" in finding.evidence["statement"]
    assert finding.evidence["repeats_per_call"] >= 1000
    assert finding.culprit is not None and finding.culprit.function == "customer_total"
    source = Path(finding.culprit.file).read_text().splitlines()[finding.culprit.line - 1]
    assert "conn.execute" in source


def test_psycopg2_queries_are_recorded_with_statement_and_callers_line(postgres: str) -> None:
    """psycopg2's cursor is a C type: its connections get a recorded subclass; the extras'
    Python cursors (RealDictCursor) are recorded once, not once per class."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the `test` extra) is not installed")
    import psycopg2.extras

    with pyflight.FlightRecorder() as rec:
        conn = psycopg2.connect(postgres)
        try:
            cursor = conn.cursor()
            assert isinstance(cursor, psycopg2.extensions.cursor)
            cursor.execute("CREATE TEMP TABLE t2 (id INTEGER PRIMARY KEY, name TEXT)")
            cursor.executemany("INSERT INTO t2 VALUES (%s, %s)", [(1, "a"), (2, "b")])
            with pyflight.task("lookup2"):
                cursor.execute("SELECT name FROM t2 WHERE id = %s", (2,))  # the psycopg2 line
                assert cursor.fetchone() == ("b",)
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as dict_cursor:
                dict_cursor.execute("SELECT id FROM t2 WHERE name = %s", ("a",))
                assert dict_cursor.fetchone() == {"id": 1}
            with pytest.raises(psycopg2.errors.UndefinedColumn):
                cursor.execute("SELECT nope FROM t2")
        finally:
            conn.close()
        buf = io.BytesIO()
        rec.write_to(buf)
    model = build(loads(buf.getvalue()))
    queries: dict[str, list[Query]] = {}
    for q in db_queries(model):
        queries.setdefault(q.statement, []).append(q)
    assert "INSERT INTO t2 VALUES (...)" in queries, sorted(queries)
    assert "SELECT nope FROM t2" in queries  # a failing query is recorded too
    assert len(queries["SELECT id FROM t2 WHERE name = ?"]) == 1  # RealDictCursor: once
    (lookup,) = queries["SELECT name FROM t2 WHERE id = ?"]
    assert lookup.site is not None and lookup.site.file == __file__
    assert "# the psycopg2 line" in Path(__file__).read_text().splitlines()[lookup.site.line - 1]
    assert model.user_tasks[lookup.task].name == "lookup2"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_composed_statements_are_recorded_as_sql_not_repr(postgres: str, driver: str) -> None:
    """A statement built with the driver's ``sql`` module (identifiers quoted by the
    driver) is recorded as its SQL text with values as ?, not as ``Composed([...])``."""
    module = pytest.importorskip(driver, reason=f"{driver} (the `test` extra) is not installed")
    sql = pytest.importorskip(f"{driver}.sql")
    statement = sql.SQL("SELECT {} FROM {} WHERE id = {} AND name = {}").format(
        sql.Identifier("name"), sql.Identifier("t3"), sql.Literal(7), sql.Placeholder()
    )
    with pyflight.FlightRecorder() as rec:
        conn = module.connect(postgres)
        try:
            cursor = conn.cursor()
            cursor.execute("CREATE TEMP TABLE t3 (id INTEGER PRIMARY KEY, name TEXT)")
            cursor.execute(statement, ("x",))
            assert cursor.fetchall() == []
        finally:
            conn.close()
        buf = io.BytesIO()
        rec.write_to(buf)
    statements = {q.statement for q in db_queries(build(loads(buf.getvalue())))}
    assert 'SELECT "name" FROM "t3" WHERE id = ? AND name = ?' in statements, sorted(statements)
