"""Healthy: a FastAPI WebSocket chat on uvicorn (its own loop, in a thread), five
clients connected (the websockets library), each sending a message every 0.3-0.6 s and
getting it back in capitals. The server's handlers wait in ``receive_text`` for their
clients, its connections' reader tasks wait for the next frame, and uvicorn's lifespan
task waits all the server's life for its shutdown: idle, all of it."""

import asyncio
import random
import socket
import threading
import time

import uvicorn
import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.websocket("/chat")
async def chat(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            text = await ws.receive_text()  # the client's next message
            await ws.send_text(text.upper())
    except WebSocketDisconnect:
        pass


async def client(url: str, messages: int) -> None:
    async with websockets.connect(url) as ws:
        for i in range(messages):
            await asyncio.sleep(random.uniform(0.3, 0.6))  # the user types
            await ws.send(f"hello {i}")
            await ws.recv()


async def clients(port: int) -> None:
    await asyncio.gather(*(client(f"ws://127.0.0.1:{port}/chat", 4) for _ in range(5)))


def main() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
    thread.start()
    while not server.started:
        time.sleep(0.01)
    asyncio.run(clients(sock.getsockname()[1]))
    server.should_exit = True
    thread.join()


if __name__ == "__main__":
    main()
