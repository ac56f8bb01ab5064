"""Planted: converter threads wait for an external tool (``subprocess.run``), and the
main thread for a child process's answer on a pipe: waits inside the standard library
that no hook sees (``waitpid``, a pipe read)."""

import multiprocessing
import multiprocessing.connection
import subprocess
import threading
import time


def convert_video(n: int) -> None:
    for _ in range(n):
        subprocess.run(["sleep", "0.3"], check=True)  # the external tool: waitpid


def answer(conn: multiprocessing.connection.Connection) -> None:
    time.sleep(0.3)
    conn.send("ready")


def main() -> None:
    threads = [threading.Thread(target=convert_video, args=(3,), name=f"converter-{i}") for i in range(3)]
    for t in threads:
        t.start()
    parent, child = multiprocessing.Pipe()
    helper = multiprocessing.get_context("fork").Process(target=answer, args=(child,))
    helper.start()
    parent.recv()  # a pipe read
    helper.join()
    for t in threads:
        t.join()
