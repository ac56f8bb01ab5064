"""Planted: download threads block in recv on a slow server."""

import socket
import threading
import time


def slow_server(listener: socket.socket, clients: int) -> None:
    conns = [listener.accept()[0] for _ in range(clients)]
    for _ in range(10):
        time.sleep(0.06)
        for c in conns:
            c.sendall(b"x" * 16)
    for c in conns:
        c.close()


def download_chunks(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        while sock.recv(16):  # waits for the slow server
            pass


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = threading.Thread(target=slow_server, args=(listener, 3), name="server")
    server.start()
    clients = [
        threading.Thread(target=download_chunks, args=(listener.getsockname(),), name=f"downloader-{i}")
        for i in range(3)
    ]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    server.join()
    listener.close()
