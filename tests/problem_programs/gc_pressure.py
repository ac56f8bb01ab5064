"""Planted: many long-lived cyclic objects; full collections walk all of them."""

from __future__ import annotations

import gc


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None
        self.payload = [1, 2, 3]


keep: list[Node] = []


def build_graph() -> None:
    for _ in range(600_000):
        a, b = Node(), Node()
        a.peer, b.peer = b, a
        keep.append(a)


def main() -> None:
    gc.set_threshold(700, 10, 10)
    build_graph()
