"""How the command line reports a failure: one line saying what was wrong and what to do, and an
exit code: 2 for bad input or usage (the user can fix the command), 1 for other failures, 130 for
Ctrl-C. ``--debug`` (or ``PRUNEKIT_DEBUG=1``) adds the traceback."""

from __future__ import annotations

import contextlib
import errno
import pickle
import sys
import warnings
from typing import Any, Iterator

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def one_line_warnings(command: str, debug: bool = False) -> Iterator[None]:
    """Show every warning raised while the block runs (the library's StructuredPruningWarning, deprecations,
    other libraries' warnings) as one line on stderr, ``prunekit <command>: warning: <message>``, instead of
    Python's two-line format with a source line; ``debug`` adds the category and where it was raised. The
    filters (what is shown, once per place) and the previous display are restored afterwards."""

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: Any = None) -> None:
        where = f" ({category.__name__} at {filename}:{lineno})" if debug else ""
        print(f"prunekit {command}: warning: {_one_line(message)}{where}", file=sys.stderr)

    with warnings.catch_warnings():  # saves and restores showwarning and the filters
        warnings.showwarning = show
        # torch says this whenever its weights_only reader meets a pickle protocol other than 2, which is what
        # it meets when a file holds more than tensors: prunekit refuses those files itself with one line saying
        # why, so torch's line would be a second, misleading one
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def describe(exc: BaseException, debug: bool = False) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the command line."""
    from ..infra.atomic import OutputBusyError

    hint = "" if debug else " (rerun with --debug for the traceback)"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, ("interrupted (Ctrl-C): stopped before the end; temporary files were removed and "
                                  "no output was written or replaced")
    if isinstance(exc, OutputBusyError):
        return EXIT_FAILURE, f"error: {_one_line(exc)}"
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        if type(exc).__name__ == "JSONDecodeError":
            return EXIT_USAGE, f"error: a JSON file is corrupt: {_one_line(exc)}"
        return EXIT_USAGE, f"error: {_one_line(exc)}"
    if isinstance(exc, pickle.UnpicklingError):
        return EXIT_USAGE, ("error: the file holds pickled Python objects besides tensors, which prunekit does not "
                            "unpickle (that could run code from the file); save the weights as safetensors or as a "
                            "state_dict of tensors")
    if type(exc).__name__ == "SafetensorError":
        return EXIT_USAGE, f"error: a .safetensors file is truncated or corrupt ({_one_line(exc)}); write it again"
    if isinstance(exc, PermissionError):
        return EXIT_FAILURE, (f"error: permission denied: {exc.filename or _one_line(exc)}; check its permissions "
                              "or choose another path")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return EXIT_FAILURE, (f"error: no space left on the device{f' writing {exc.filename}' if exc.filename else ''}"
                              "; free some space or choose another --out. Nothing was replaced")
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_FAILURE, f"error: {where}{_one_line(exc.strerror or exc)}{hint}"
    if isinstance(exc, MemoryError):
        return EXIT_FAILURE, ("error: out of memory; try a smaller --nsamples/--seqlen/--batch, or a machine with "
                              "more memory")
    return EXIT_FAILURE, f"error: {type(exc).__name__}: {_one_line(exc) or 'no message'}{hint}"
