"""The ping-pong demo as a server you run yourself and poke at.

    pip install 'pyflight[demo]'
    python examples/pingpong_server.py            # http://127.0.0.1:8000, Ctrl-C to stop

    curl http://127.0.0.1:8000/score
    curl http://127.0.0.1:8000/trace              # {"path": "./pyflight-...-trace.pyfl", ...}
    curl -OJ http://127.0.0.1:8000/debug/pyflight/trace    # the same window, as a download
    pyflight info pyflight-*-trace.pyfl

The game itself (players, scorer, the misbehaving ``clumsy``) and the FastAPI app are in
``pyflight/demo.py``. This file shows what a service adds to be recorded: start a
FlightRecorder, add the ASGI middleware (``create_app`` does), and install automatic
triggers. Here clumsy's blocking calls stall the event loop for 0.12-0.25 s, so
``loop-stall`` snapshots appear in ./snapshots: at most one a minute, at most ten, and
never more than 100 MiB there.
"""

from __future__ import annotations

import uvicorn

import pyflight
from pyflight.demo import create_app
from pyflight.triggers.auto import Triggers


def main() -> None:
    # Keep the last 10 s (up to 32 MiB) of every thread and task, always.
    recorder = pyflight.FlightRecorder(min_age=10, max_bytes=32 * 2**20).start()
    triggers = Triggers(
        "snapshots",
        loop_stall=0.1,  # an event-loop step running 100 ms or more
        slow_request=0.5,  # a request slower than 500 ms
        gc_pause=0.1,  # a garbage collection longer than 100 ms
        cooldown=60,
        max_count=10,
        quota_bytes=100 * 2**20,
    ).install()
    try:
        uvicorn.run(create_app("."), host="127.0.0.1", port=8000, loop="asyncio")
    finally:
        triggers.uninstall()
        recorder.stop()


if __name__ == "__main__":
    main()
