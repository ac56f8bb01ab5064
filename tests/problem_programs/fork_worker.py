"""Planted: a forked worker (as gunicorn's sync workers are) burns about 1 s of CPU.

The child prints one JSON line: its pid and the CPU it used by the kernel's count."""

import json
import os
import sys
import time


def burn(seconds: float) -> int:
    end = time.process_time() + seconds
    total = 0
    while time.process_time() < end:
        total += sum(i * i for i in range(300))  # BURN LINE
    return total


def main() -> None:
    pid = os.fork()
    if pid == 0:
        began = time.process_time()
        burn(1.0)
        print(json.dumps({"pid": os.getpid(), "cpu_s": time.process_time() - began}), flush=True)
        sys.exit(0)  # a normal exit: the recorder writes the child's window
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
