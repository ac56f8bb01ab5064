"""Healthy: a thread follows a gRPC server-streaming subscription (a price feed on
loopback pushing a message every 0.2 s) while the main thread works. The gRPC server's
own polling thread waits in gRPC's C core for calls: idle, no untraced wait."""

import hashlib
import threading
import time
from concurrent import futures

import grpc


def feed(request: bytes, context: grpc.ServicerContext):
    for n in range(10):
        time.sleep(0.2)
        yield f"price {n}".encode()


def follow(port: int, got: list[str]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        subscribe = channel.unary_stream("/prices.Feed/Subscribe")
        for message in subscribe(b"EURUSD"):
            got.append(hashlib.sha1(message).hexdigest())


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "prices.Feed", {"Subscribe": grpc.unary_stream_rpc_method_handler(feed)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    got: list[str] = []
    t = threading.Thread(target=follow, args=(port, got), name="feed-follower")
    t.start()
    data = b"x"
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        data = hashlib.sha256(data * 1000).digest()
    t.join()
    server.stop(None)


if __name__ == "__main__":
    main()
