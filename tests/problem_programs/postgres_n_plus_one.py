"""Planted (case 8 on PostgreSQL, psycopg 3): a monthly report reads the customers, then
each customer's invoices with one query per customer (an N+1), the id as a parameter.

Needs a PostgreSQL server: its URI in PYFLIGHT_TEST_PG_URI (tests/analysis/rules/test_n_plus_one.py
starts one with pgserver)."""

import os

import psycopg

import pyflight

CUSTOMERS = 1000


def create_tables(conn: psycopg.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS invoice; DROP TABLE IF EXISTS customer")
    conn.execute("CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE invoice (id SERIAL PRIMARY KEY, customer_id INTEGER, amount NUMERIC)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO customer VALUES (%s, %s)", [(i, f"c{i}") for i in range(CUSTOMERS)])
        cur.executemany(
            "INSERT INTO invoice (customer_id, amount) VALUES (%s, %s)",
            [(i % CUSTOMERS, i % 97) for i in range(CUSTOMERS * 4)],
        )
    conn.commit()


def customer_total(conn: psycopg.Connection, customer_id: int) -> float:
    sql = "SELECT sum(amount) FROM invoice WHERE customer_id = %s"
    row = conn.execute(sql, (customer_id,)).fetchone()  # planted
    return float(row[0] or 0) if row else 0.0


def main() -> None:
    with psycopg.connect(os.environ["PYFLIGHT_TEST_PG_URI"]) as conn:
        create_tables(conn)
        for _ in range(3):
            with pyflight.task("monthly-report"):
                customers = conn.execute("SELECT id, name FROM customer ORDER BY id").fetchall()
                totals = {cid: customer_total(conn, cid) for cid, _ in customers}
                assert len(totals) == CUSTOMERS
