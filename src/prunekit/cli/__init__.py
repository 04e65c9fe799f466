"""``prunekit`` command line: thin subcommands that parse, call the library and print.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser's
``func`` attribute runs it.
"""

from __future__ import annotations

import argparse
import sys

from . import data, demo, eval, export, prune, summary_cmd

SUBCOMMANDS = [prune, eval, export, summary_cmd, demo, data]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune neural networks and data sets, and measure what each method buys.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``prunekit`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"prunekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
