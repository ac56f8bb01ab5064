"""Healthy: sqlite_busy_threads with the slow partner call moved after the commit: the
write transaction is short, the order threads hardly wait."""

import os
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from sqlite_busy_threads import create_db, notify_partner, take_orders


def export_stock(path: str, rounds: int, stop: threading.Event) -> None:
    conn = sqlite3.connect(path, timeout=10)
    for i in range(rounds):
        conn.execute("UPDATE stock SET n = n - 1 WHERE sku = ?", (f"sku-{i % 20}",))
        conn.commit()
        notify_partner()  # after the commit: nobody waits for it
        time.sleep(0.03)
    stop.set()
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
