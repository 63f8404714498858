"""The ``engine-sim`` command-line flags: argparse only, so a parser can be built cheaply."""

from __future__ import annotations

import argparse
import math


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``engine-sim`` flags to ``parser``."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=_non_negative_float,
        default=30.0,
        metavar="N",
        help="duration of one generation when it runs alone (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-mb",
        type=_non_negative_int,
        default=256,
        metavar="N",
        help="memory held per running generation, in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--no-cpu",
        action="store_true",
        help="do not spin a CPU core per running generation",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        metavar="N",
        help="items of a /batch-generate request that names none (default: %(default)s)",
    )
