"""What every subcommand shares: --json, --quiet and --debug, printing results, and silencing the
libraries' own progress bars and logging."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any, Iterator


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a subcommand the shared flags: ``--json`` (machine-readable output), ``--quiet`` and ``--debug``."""
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON document on stdout (implies --quiet)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the full traceback")
    return parser


def is_quiet(args: argparse.Namespace) -> bool:
    """Whether progress output is off: ``--quiet``, or ``--json`` (which keeps stdout for the result)."""
    return bool(getattr(args, "quiet", False) or getattr(args, "json", False))


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def say(args: argparse.Namespace, text: str) -> None:
    """Progress chatter on stderr, silenced by ``--quiet`` and by ``--json``."""
    if not is_quiet(args):
        print(text, file=sys.stderr)


def warn(args: argparse.Namespace, text: str) -> None:
    """A warning about the command line on stderr (shown even with --quiet)."""
    print(f"prunekit {getattr(args, 'command', '')}: warning: {text}", file=sys.stderr)


_QUIET_ENV = {
    "TQDM_DISABLE": "1",  # every tqdm bar, prunekit's and the libraries' (tqdm ≥ 4.66 reads TQDM_* defaults)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the progress bars and info logging of tqdm, transformers, datasets and huggingface_hub
    for the duration (already imported or imported later), then put everything back."""
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    undo = []
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_level, tf_bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
        undo.append(lambda: (tf_logging.set_verbosity(tf_level), tf_bars and tf_logging.enable_progress_bar()))
    if "datasets" in sys.modules:
        import datasets.utils as ds_utils
        from datasets.utils import logging as ds_logging

        ds_level, ds_off = ds_logging.get_verbosity(), ds_utils.are_progress_bars_disabled()
        ds_logging.set_verbosity_error()
        ds_utils.disable_progress_bars()
        undo.append(lambda: (ds_logging.set_verbosity(ds_level), ds_off or ds_utils.enable_progress_bars()))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        was_off = are_progress_bars_disabled()
        disable_progress_bars()
        undo.append(lambda: None if was_off else enable_progress_bars())
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(hub_level)
        for fn in reversed(undo):
            fn()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
