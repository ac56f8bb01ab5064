"""Planted: a thread pool whose jobs run an external tool and read its output
(``subprocess.run(..., capture_output=True)``): each worker waits for its child in
``Popen.communicate``, which blocks in a ``selectors`` select on the child's two pipes,
while the other jobs queue behind the two workers."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

TOOL = [sys.executable, "-c", "import time; time.sleep(0.5); print('x')"]


def render_thumbnail(n: int) -> str:
    done = subprocess.run(TOOL, capture_output=True, check=True)  # THE TOOL
    return done.stdout.decode().strip()


def main() -> None:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="thumbnails") as pool:
        assert list(pool.map(render_thumbnail, range(6))) == ["x"] * 6
