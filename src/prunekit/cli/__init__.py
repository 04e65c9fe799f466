"""``prunekit`` command line: thin subcommands that parse, call the library and print.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser's
``func`` attribute runs it. Every failure ends as one line on stderr and an exit code, every warning as one
line ``prunekit <command>: warning: ...`` (see :mod:`prunekit.cli.errors`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Iterator

from . import data, demo, diffusion, eval, export, merge, prune, report_cmd, results_cmd, run_cmd, shrink, summary_cmd
from .common import is_quiet, quiet_libraries
from .errors import EXIT_INTERRUPTED, describe, one_line_warnings
from ..infra.machine import enable_huge_pages

SUBCOMMANDS = [prune, eval, export, merge, summary_cmd, demo, data, run_cmd, results_cmd, report_cmd, shrink, diffusion]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune neural networks and data sets, and measure what each method buys.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad input or usage, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    parser.add_argument("--threads", dest="torch_threads", default="auto", type=_threads_arg, metavar="N|auto",
                        help="CPU threads for torch (default auto: one per core not busy with other processes, "
                             "from the load average; PRUNEKIT_THREADS sets the default)")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subs)
    return parser


def _threads_arg(text: str) -> int | None:
    """``--threads``: a positive int, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def thread_count(requested: int | None) -> int:
    """torch's intra-op threads for a command: ``requested``, else ``PRUNEKIT_THREADS``, else one per free core
    (:func:`prunekit.infra.machine.free_cores`)."""
    from ..infra.machine import free_cores

    if requested is None and os.environ.get("PRUNEKIT_THREADS", "auto") != "auto":
        try:
            requested = _threads_arg(os.environ["PRUNEKIT_THREADS"])
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"PRUNEKIT_THREADS: {exc}; set it to a thread count or unset it") from None
    return requested if requested is not None else free_cores()


@contextlib.contextmanager
def torch_threads(requested: int | None) -> Iterator[int]:
    """Run a command with :func:`thread_count` torch threads; the previous count is restored after it."""
    import torch

    old = torch.get_num_threads()
    count = thread_count(requested)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143), so that cleanup (temporary folders, locks) runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``prunekit`` command: 0 on success, 1 on a failure, 2 on bad input, 130 on Ctrl-C."""
    enable_huge_pages()  # before any tensor exists: torch reads the setting once (THP_MEM_ALLOC_ENABLE=0 opts out)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False) or os.environ.get("PRUNEKIT_DEBUG"))
    quiet = quiet_libraries() if is_quiet(args) else contextlib.nullcontext()
    try:
        with _terminate_as_exit(), quiet, one_line_warnings(args.command, debug), \
                torch_threads(getattr(args, "torch_threads", None)):
            return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the boundary: every failure becomes one line
        failure = exc
    code, message = describe(failure, debug)
    if debug:
        traceback.print_exception(failure)
    print(f"prunekit {args.command}: {message}", file=sys.stderr)
    return code
