"""Planted: four threads run a simulation in lockstep, meeting at a threading.Barrier
after each step; the shards are split by region, and one region (shard 3) holds most of
the particles, so each step waits for it: the other three threads spend most of their
time at the barrier."""

import threading
import time

STEPS = 6
SHARD_SIZES = [2_000, 2_000, 2_000, 12_000]  # particles per shard: shard 3 is six times bigger
step_done = threading.Barrier(4)


def load_particles(n: int) -> list[float]:
    return [i * 0.5 for i in range(n)]


def advance(particles: list[float]) -> None:
    for _ in range(2):
        particles[:] = [p * 1.0001 + 0.5 for p in particles]
    time.sleep(len(particles) / 100_000)  # writing the shard's state out: the big shard's is slow


def simulate(shard: int) -> None:
    particles = load_particles(SHARD_SIZES[shard])
    for _ in range(STEPS):
        advance(particles)  # the straggler's work: shard 3 takes six times as long
        step_done.wait()  # everyone waits for the slowest shard


def main() -> None:
    threads = [threading.Thread(target=simulate, args=(n,), name=f"shard-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
