"""Run one problem program under a FlightRecorder and write its trace.

    python _harness.py PROGRAM.py OUT.pyfl

The recorder starts before the program is imported (so its locks and ``time.sleep``
are the traced ones); the program's ``main()`` runs, then the window is written. A
program may set ``PYFLIGHT_SOURCE_OPTIONS`` (dict) for source options;
``PYFLIGHT_HARNESS_UNBUDGETED=1`` in the environment records without the CPU budget.
"""

from __future__ import annotations

import ast
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

from pyflight.recorder import FlightRecorder


def _options(path: str) -> dict[str, dict[str, object]]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PYFLIGHT_SOURCE_OPTIONS" for t in node.targets
        ):
            value: dict[str, dict[str, object]] = ast.literal_eval(node.value)
            return value
    return {}


def main() -> int:
    program, out = sys.argv[1], sys.argv[2]
    unbudgeted: dict[str, None] = (
        {"cpu_budget": None} if os.environ.get("PYFLIGHT_HARNESS_UNBUDGETED") == "1" else {}
    )
    recorder = FlightRecorder(
        min_age=60, max_bytes=64 * 2**20, source_options=_options(program), **unbudgeted
    )
    # the program's temporary files (its databases) go in a directory removed at the end:
    # thousands of runs must not pile up in /tmp
    scratch = tempfile.mkdtemp(prefix="pyflight-program-")
    tempfile.tempdir = scratch
    recorder.start()
    try:
        spec = importlib.util.spec_from_file_location("problem_program", program)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["problem_program"] = module
        spec.loader.exec_module(module)
        module.main()
    finally:
        recorder.write_to(out)
        recorder.stop()
        atexit.register(shutil.rmtree, scratch, True)  # at exit: the program may still hold files open
    return 0


if __name__ == "__main__":
    sys.exit(main())
