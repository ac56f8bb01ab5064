"""Planted (case 8, no ORM): two worker threads build invoices; each job reads the orders,
then sums each order's items with one query per order, the order id pasted into the SQL
(an N+1 over sqlite3, ~800 queries per job, each scanning the unindexed items table)."""

import os
import sqlite3
import tempfile
import threading

import pyflight

ORDERS = 800


def create_db() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="pyflight-sqlite-"), "shop.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT)")
        conn.execute("CREATE TABLE items (order_id INTEGER, sku TEXT, price REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, f"c{i % 50}") for i in range(ORDERS)])
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(i % ORDERS, f"sku-{i}", 1.5 + i % 7) for i in range(ORDERS * 5)],
        )
    return path


def order_total(conn: sqlite3.Connection, order_id: int) -> float:
    row = conn.execute(f"SELECT sum(price) FROM items WHERE order_id = {order_id}").fetchone()  # planted
    return float(row[0] or 0.0)


def invoice_job(path: str) -> None:
    conn = sqlite3.connect(path)
    for _ in range(3):
        with pyflight.task("nightly-invoices"):
            orders = conn.execute("SELECT id, customer FROM orders").fetchall()
            totals = {order_id: order_total(conn, order_id) for order_id, _ in orders}
            assert len(totals) == ORDERS
    conn.close()


def main() -> None:
    path = create_db()
    threads = [threading.Thread(target=invoice_job, args=(path,), name=f"invoicer-{n}") for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
