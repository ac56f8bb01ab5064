"""Healthy: four threads advance balanced shards in lockstep through a threading.Barrier;
they arrive together, whoever is last, so nobody is a straggler."""

import threading
import time

STEPS = 10
step_done = threading.Barrier(4)


def advance(particles: list[float]) -> None:
    particles[:] = [p * 1.0001 + 0.5 for p in particles]
    time.sleep(0.03)  # writing the shard's state out


def simulate(shard: int) -> None:
    particles = [i * 0.5 for i in range(2_000)]
    for _ in range(STEPS):
        advance(particles)
        step_done.wait()


def main() -> None:
    threads = [threading.Thread(target=simulate, args=(n,), name=f"shard-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
