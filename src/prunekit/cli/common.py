"""What every subcommand shares: --json and --quiet, and printing results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a subcommand the shared flags: ``--json`` (machine-readable output) and ``--quiet``."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    return parser


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def say(args: argparse.Namespace, text: str) -> None:
    """Progress chatter on stderr, silenced by ``--quiet`` (and by ``--json``, to keep stdout clean)."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)
