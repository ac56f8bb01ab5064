"""Planted: a worker thread builds a large cyclic structure; collections pause everyone."""

import gc
import threading


class Record:
    def __init__(self, parent: "Record | None") -> None:
        self.parent = parent
        self.children: list[Record] = []
        if parent is not None:
            parent.children.append(self)


store: list[Record] = []


def load_records() -> None:
    for _ in range(6_000):
        root = Record(None)
        for _ in range(60):
            Record(root)
        store.append(root)


def main() -> None:
    gc.set_threshold(500, 5, 5)
    t = threading.Thread(target=load_records, name="loader")
    t.start()
    t.join()
