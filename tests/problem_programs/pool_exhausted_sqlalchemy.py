"""Planted: eight request threads share a SQLAlchemy engine whose pool holds two
connections (pool_size=2, max_overflow=0), and each request keeps its connection checked
out while it calls a slow payment API: six threads at a time wait in the pool for a
connection. The story is the pool (bigger, or shorter checkouts), not an item one
request holds, nor an idle queue."""

import os
import tempfile
import threading
import time

from sqlalchemy import create_engine, text


def charge_card() -> None:
    time.sleep(0.05)  # the payment API, called with the connection still checked out


def handle_request(engine, orders: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(orders):
        with engine.connect() as conn:  # waits here for one of the pool's two connections
            conn.execute(text("SELECT count(*) FROM orders")).scalar()
            charge_card()


def main() -> None:
    db = os.path.join(tempfile.mkdtemp(prefix="pyflight-sqlalchemy-"), "shop.db")
    engine = create_engine(f"sqlite:///{db}", pool_size=2, max_overflow=0, pool_timeout=30)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)"))
    threads = [
        threading.Thread(target=handle_request, args=(engine, 5), name=f"request-{n}") for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
