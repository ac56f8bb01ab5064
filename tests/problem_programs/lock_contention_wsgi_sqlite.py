"""Planted: a Flask app on waitress (8 threads) serialises its one sqlite connection
behind a lock, and /report runs a slow query (~0.1 s, in sqlite's C code with the GIL
released) under it: requests queue on the lock. Six client threads call it at once."""

import sqlite3
import threading
import urllib.request

from flask import Flask
from waitress.server import create_server

app = Flask(__name__)
db_lock = threading.Lock()
db = sqlite3.connect(":memory:", check_same_thread=False)


def fill() -> None:
    db.execute("create table t(a integer, b integer)")
    db.executemany("insert into t values (?, ?)", ((i, i % 97) for i in range(60000)))
    db.commit()


@app.route("/report")
def report() -> str:
    with db_lock:  # the waiting line
        n = db.execute(
            "select count(*) from t x join t y on x.b = y.b where x.a < 9000 and y.a % 7 = 0"
        ).fetchone()[0]  # the holders' line: the slow query
    return str(n)


def client(port: int, n: int) -> None:
    for _ in range(n):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report") as reply:
            reply.read()


def main() -> None:
    fill()
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    serving = threading.Thread(target=server.run, name="waitress-serve", daemon=True)
    serving.start()
    clients = [threading.Thread(target=client, args=(server.effective_port, 4)) for _ in range(6)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    server.close()


if __name__ == "__main__":
    main()
