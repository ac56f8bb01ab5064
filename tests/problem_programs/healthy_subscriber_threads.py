"""Healthy: two threads subscribe to a broker's feed (as a Redis pub/sub or websocket
listener does) and handle what it pushes, ~7 messages a second; the main thread does the
program's work. The subscribers wait in recv for the broker to speak: idle, not I/O the
program asked for (nothing is sent on their sockets after subscribing)."""

import hashlib
import socket
import threading
import time


def broker(server: socket.socket, stop: threading.Event) -> None:
    conns = [server.accept()[0] for _ in range(2)]
    for c in conns:
        c.recv(64)  # the SUBSCRIBE line
    n = 0
    while not stop.wait(0.15):
        n += 1
        for c in conns:
            c.sendall(f"event {n}\n".encode())
    for c in conns:
        c.sendall(b"bye\n")
        c.close()


def subscriber(port: int, handled: list[str]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"SUBSCRIBE news\n")
    with sock, sock.makefile("rb") as feed:
        for message in feed:
            if message == b"bye\n":
                return
            handled.append(hashlib.sha1(message).hexdigest())


def work(seconds: float) -> bytes:
    data = b"x" * 4096
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = hashlib.sha256(data).digest() * 128
    return data


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()
    handled: list[str] = []
    threads = [threading.Thread(target=broker, args=(server, stop), name="broker")]
    threads += [
        threading.Thread(target=subscriber, args=(port, handled), name=f"subscriber-{i}") for i in range(2)
    ]
    for t in threads:
        t.start()
    work(2.0)
    stop.set()
    for t in threads:
        t.join()
    server.close()


if __name__ == "__main__":
    main()
