"""Healthy: the invoice job of sqlite_n_plus_one_threads done with one grouped query per
job (``GROUP BY order_id``), plus a few distinct lookups: no statement repeats."""

import os
import sqlite3
import sys
import threading

import pyflight

sys.path.insert(0, os.path.dirname(__file__))
from sqlite_n_plus_one_threads import create_db


def invoice_job(path: str) -> None:
    conn = sqlite3.connect(path)
    for _ in range(3):
        with pyflight.task("nightly-invoices"):
            rows = conn.execute("SELECT order_id, sum(price) FROM items GROUP BY order_id").fetchall()
            customers = dict(conn.execute("SELECT id, customer FROM orders").fetchall())
            assert len(rows) == len(customers)
            conn.execute("SELECT count(*) FROM items WHERE price > ?", (3.0,)).fetchone()
    conn.close()


def main() -> None:
    path = create_db()
    threads = [threading.Thread(target=invoice_job, args=(path,), name=f"invoicer-{n}") for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
