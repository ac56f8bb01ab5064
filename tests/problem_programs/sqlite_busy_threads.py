"""Planted (case 5, a database's own lock): an exporter thread updates the stock table,
then calls a slow partner API (~250 ms) *before* committing; SQLite allows one writer
at a time, so the order threads' INSERTs wait in sqlite's busy handler (``timeout=10``)
until the exporter commits."""

import os
import sqlite3
import tempfile
import threading
import time


def create_db() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="pyflight-sqlite-"), "shop.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, n INTEGER)")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT)")
        conn.executemany("INSERT INTO stock VALUES (?, ?)", [(f"sku-{i}", 100) for i in range(20)])
    conn.close()
    return path


def notify_partner() -> None:
    time.sleep(0.25)  # a slow HTTP call, inside the open write transaction


def export_stock(path: str, rounds: int, stop: threading.Event) -> None:
    conn = sqlite3.connect(path, timeout=10)
    for i in range(rounds):
        conn.execute("UPDATE stock SET n = n - 1 WHERE sku = ?", (f"sku-{i % 20}",))
        notify_partner()  # the planted mistake: slow work before the commit
        conn.commit()
        time.sleep(0.03)
    stop.set()
    conn.close()


def save_order(conn: sqlite3.Connection, sku: str) -> None:
    conn.execute("INSERT INTO orders (sku) VALUES (?)", (sku,))  # waits for the write lock
    conn.commit()


def take_orders(path: str, n: int, stop: threading.Event) -> None:
    conn = sqlite3.connect(path, timeout=10)
    i = 0
    while not stop.is_set():
        save_order(conn, f"sku-{(n + i) % 20}")
        i += 1
        time.sleep(0.02)
    conn.close()


def main() -> None:
    path = create_db()
    stop = threading.Event()
    threads = [threading.Thread(target=export_stock, args=(path, 6, stop), name="stock-exporter")]
    threads += [
        threading.Thread(target=take_orders, args=(path, n, stop), name=f"orders-{n}") for n in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
