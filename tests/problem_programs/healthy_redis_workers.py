"""Healthy: two job-queue workers (redis-py's BLPOP with a 1 s timeout, as an RQ worker
waits) sit idle waiting for jobs from a broker (a tiny RESP server on loopback) that
hands one out every 0.4 s; the main thread does the program's work."""

import hashlib
import socket
import threading
import time

import redis


def broker(server: socket.socket, stop: threading.Event) -> None:
    def serve(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        n = 0
        while not stop.is_set():
            line = f.readline()
            if not line:
                return
            if line.startswith(b"*"):
                count = int(line[1:])
                parts = []
                for _ in range(count):
                    f.readline()
                    parts.append(f.readline().strip())
                cmd = parts[0].upper()
                if cmd == b"BLPOP":
                    time.sleep(0.4)  # no job for a while
                    n += 1
                    job = f"job-{n}".encode()
                    conn.sendall(b"*2\r\n$4\r\njobs\r\n$" + str(len(job)).encode() + b"\r\n" + job + b"\r\n")
                else:
                    conn.sendall(b"+OK\r\n")

    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def worker(port: int, done: list[str], stop: threading.Event) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    while not stop.is_set():
        item = r.blpop(["jobs"], timeout=1)  # waits for the next job
        if item:
            done.append(hashlib.sha1(item[1]).hexdigest())


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    threading.Thread(target=broker, args=(server, stop), daemon=True).start()
    done: list[str] = []
    port = server.getsockname()[1]
    workers = [
        threading.Thread(target=worker, args=(port, done, stop), name=f"rq-worker-{i}") for i in range(2)
    ]
    for w in workers:
        w.start()
    data = b"x"
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        data = hashlib.sha256(data * 1000).digest()
    stop.set()
    for w in workers:
        w.join()
    server.close()


if __name__ == "__main__":
    main()
