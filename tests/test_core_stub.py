"""The C core's type stub (src/pyflight/_core.pyi) names what the built extension has."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import pyflight
from pyflight.core import _pycore

_core = pytest.importorskip("pyflight._core")
STUB = Path(pyflight.__file__).with_name("_core.pyi")


def _stub() -> tuple[set[str], dict[str, set[str]]]:
    """Top-level names of the stub, and the members declared in each of its classes."""
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            classes[node.name] = members
    return names, classes


def test_the_stub_is_shipped_beside_the_extension() -> None:
    assert STUB.is_file()
    assert Path(pyflight.__file__).with_name("py.typed").is_file()


def test_the_stub_and_the_extension_name_the_same_things() -> None:
    names, classes = _stub()
    built = {n for n in dir(_core) if not n.startswith("__")}
    assert built == names
    for cls, members in classes.items():
        own = {n for n in vars(getattr(_core, cls)) if not n.startswith("__") or n in members}
        assert members - {"__init__", "__new__", "__call__", "__get__"} <= own | {"name", "id"}, cls
        assert {n for n in own if not n.startswith("__")} <= members, cls


def test_the_shared_functions_match_the_pure_core() -> None:
    """Every public function of the pure core is in the stub with the same parameters."""
    tree = ast.parse(STUB.read_text())
    stub_params = {
        node.name: [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }
    for name in _pycore.__all__:
        obj = getattr(_pycore, name)
        if not callable(obj) or isinstance(obj, type) or name in ("now", "thread_id"):
            continue  # now / thread_id are aliases of time and threading functions there
        parameters = inspect.signature(obj).parameters.values()
        params = [p.name for p in parameters if p.kind is not p.VAR_POSITIONAL]
        assert stub_params.get(name) == params, name


def test_stubtest_finds_the_signatures_right() -> None:
    """mypy's stubtest compares the stub with the extension at runtime (parameters,
    finality). It also asks for ``@disjoint_base``, which the typing of Python 3.11 has not."""
    import subprocess
    import sys

    if sys.version_info >= (3, 12):
        # 3.13's introspection reports METH_NOARGS functions as ``(self, /)`` and C
        # parameters as positional-only, which no single stub can match on 3.11 too
        pytest.skip("the stub is checked against the runtime on Python 3.11 (the mypy target)")
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "pyflight._core"], capture_output=True, text=True, timeout=300
    )
    errors = [
        line for line in done.stdout.splitlines() if line.startswith("error:") and "disjoint base" not in line
    ]
    assert errors == [], done.stdout
