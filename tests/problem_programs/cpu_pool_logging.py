"""Healthy-but-CPU-bound: a data pipeline whose ThreadPoolExecutor parses JSON documents
(CPU, holding the GIL) and logs a line per document to a local file. The workers queue on
the logging handler's lock, but only because each holder, after its write, waits for the
GIL the others are using: the threads take turns on one CPU. The story is the CPU work
(summarize), not a slow stream or a lock."""

import json
import logging
import os
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("pipeline")


def make_doc(i: int) -> str:
    rng = random.Random(i)
    return json.dumps({"id": i, "items": [{"k": rng.random(), "v": "x" * 20} for _ in range(300)]})


def summarize(doc: str) -> float:
    data = json.loads(doc)
    total = sum(item["k"] for item in data["items"])
    log.info("doc %s total %.3f", data["id"], total)
    return total


def main() -> None:
    fd, path = tempfile.mkstemp(suffix=".log")
    os.close(fd)
    handler = logging.FileHandler(path)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        docs = [make_doc(i) for i in range(400)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(8):
                list(pool.map(summarize, docs))
    finally:
        log.removeHandler(handler)
        handler.close()
        os.unlink(path)
