"""Argument types of every verb: each parses one command-line word or raises
``argparse.ArgumentTypeError`` (one line, exit 2)."""

from __future__ import annotations

import argparse

__all__ = [
    "cpu_budget",
    "host_port",
    "pid",
    "port",
    "seconds",
    "signal_or_none",
    "size",
    "source_list",
    "source_option",
]


def size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 10M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1)."""
    host, sep, number = text.strip().rpartition(":")
    if not sep:
        host, number = "", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    if not number.isdigit() or int(number) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (try 127.0.0.1:8765)")
    return host, int(number)


def port(text: str) -> int:
    """A TCP port number (0: any free one)."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def pid(text: str) -> int:
    """A process id."""
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def source_option(text: str) -> tuple[str, str, object]:
    """``SOURCE.OPTION=VALUE`` (``asyncio.task_wait=stack``): true/false, numbers and none
    are read as such, anything else as text."""
    key, sep, raw = text.partition("=")
    source, dot, option = key.strip().partition(".")
    if not sep or not dot or not source or not option:
        raise argparse.ArgumentTypeError(f"not SOURCE.OPTION=VALUE: {text!r} (try asyncio.task_wait=stack)")
    word = raw.strip()
    value: object
    if word.lower() in ("true", "on", "yes"):
        value = True
    elif word.lower() in ("false", "off", "no"):
        value = False
    elif word.lower() == "none":
        value = None
    else:
        try:
            value = int(word)
        except ValueError:
            try:
                value = float(word)
            except ValueError:
                value = word
    return source, option.strip(), value


def signal_or_none(text: str) -> int | None:
    """A signal name or number, or ``none``."""
    from pyflight.triggers.signals import parse_signal

    if text.strip().lower() in ("none", "off", "no", ""):
        return None
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cpu_budget(text: str) -> float | None:
    """``0.01``, ``1%`` or ``none``."""
    word = text.strip().lower()
    if word in ("none", "off", "no"):
        return None
    try:
        share = float(word[:-1]) / 100 if word.endswith("%") else float(word)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"not a CPU share: {text!r} (try 0.01, 1% or none)")
    return share


def source_list(text: str) -> list[str]:
    """``a,b,c``: names of registered sources (an unknown one is a usage error)."""
    from pyflight.sources import REGISTRY

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        what = f"no source {', '.join(map(repr, unknown))}" if unknown else f"no source named in {text!r}"
        raise argparse.ArgumentTypeError(f"{what} (sources: {', '.join(sorted(REGISTRY))})")
    return names
