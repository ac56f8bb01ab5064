"""Imported by Python at startup in children of ``pyflight run`` (this directory is first
on their ``PYTHONPATH``): runs the ``sitecustomize`` it hides, then starts recording.

Must never stop the child from running: any failure is one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ENV_VAR = "PYFLIGHT_RUN"  # pyflight.run.ENV_VAR


def _same_dir(entry: str) -> bool:
    try:
        return os.path.abspath(entry or os.curdir) == _HERE
    except (OSError, ValueError):
        return False


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path, as site.py would have."""
    import importlib.machinery
    import importlib.util

    rest = [entry for entry in sys.path if not _same_dir(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        else:
            sys.stderr.write(
                f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(err).__name__}: {err}\n"
            )


def _start() -> None:
    text = os.environ.get(_ENV_VAR)
    if not text:
        return
    settings = json.loads(text)
    if settings.get("cache_tag") != sys.implementation.cache_tag:
        return  # another Python than the recorded program's: leave it alone
    added = None
    try:
        import pyflight.run  # noqa: F401
    except ImportError:
        added = str(settings["package_parent"])
        sys.path.append(added)
    try:
        from pyflight.run import start_child

        start_child()
    finally:
        if added is not None and added in sys.path:
            sys.path.remove(added)  # the package stays importable through its __path__


def _main() -> None:
    sys.path[:] = [entry for entry in sys.path if not _same_dir(entry)]
    try:
        _chain()
    except Exception as exc:
        sys.stderr.write(f"pyflight: could not run the other sitecustomize: {exc}\n")
    try:
        _start()
    except Exception as exc:
        sys.stderr.write(f"pyflight: not recording process {os.getpid()}: {type(exc).__name__}: {exc}\n")


_main()
