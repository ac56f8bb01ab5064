"""Planted: a client thread waits on a slow server over a blocking socket."""

import socket
import threading
import time


def serve(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        while True:
            data = conn.recv(64)
            if not data:
                return
            time.sleep(0.05)  # the remote side is slow
            conn.sendall(b"ok")


def fetch_remote(sock: socket.socket) -> bytes:
    sock.sendall(b"get")
    return sock.recv(64)  # the waiting line


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = threading.Thread(target=serve, args=(listener,), name="server")
    server.start()
    client = socket.create_connection(listener.getsockname())
    for _ in range(15):
        fetch_remote(client)
    client.close()
    server.join()
    listener.close()
