"""Healthy: a threaded line-protocol server (``socketserver.ThreadingTCPServer``, a
thread per connection) with four persistent clients, each sending a command every
0.2-0.4 s and getting a quick answer. The server's handler threads spend their lives
reading their clients' next commands: idle connections, not I/O the server waits on."""

import hashlib
import random
import socket
import socketserver
import threading
import time


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:  # the client's next command
            self.wfile.write(hashlib.sha1(line).hexdigest().encode() + b"\n")


def client(port: int, commands: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rwb") as stream:
        for i in range(commands):
            time.sleep(random.uniform(0.2, 0.4))  # the user thinks
            stream.write(f"GET key{i}\n".encode())
            stream.flush()
            stream.readline()


def main() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="server", daemon=True).start()
    port = server.server_address[1]
    clients = [threading.Thread(target=client, args=(port, 6), name=f"client-{i}") for i in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
