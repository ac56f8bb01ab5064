"""Planted: transcoder threads run an external tool and keep its output
(``subprocess.run(..., capture_output=True)``): each waits for its child in
``Popen.communicate``, blocked in a traced ``selectors`` select on the child's two pipes
(``check_output`` would wait in an untraced pipe read, ``run()`` in ``waitpid``: the
same wait, told the same way)."""

import subprocess
import sys
import threading

TOOL = [sys.executable, "-c", "import time; time.sleep(0.3); print('done')"]


def transcode(n: int) -> None:
    for _ in range(n):
        subprocess.run(TOOL, capture_output=True, check=True)  # the external tool


def main() -> None:
    threads = [threading.Thread(target=transcode, args=(3,), name=f"transcoder-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
