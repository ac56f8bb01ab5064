"""``pyflight demo [-o OUT] [--seconds S]``: record a small ping-pong web workload and
describe the snapshot."""

from __future__ import annotations

import argparse

from pyflight.commands import types

HELP = "record a small ping-pong workload and describe the snapshot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="pyflight-demo.pyfl", help="where to write the snapshot")
    parser.add_argument("--seconds", type=types.seconds, default=2.0, help="how long to play (default 2)")


def run(args: argparse.Namespace) -> int:
    from pyflight.demo import run_demo

    return run_demo(args.output, args.seconds)
