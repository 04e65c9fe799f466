"""Writing files and folders so that nothing is lost and nothing is left half-written.

- :func:`atomic_file` yields a unique temporary path beside the target; on success the file is
  fsynced, given the user's umask permissions and renamed onto the target; on failure it is removed.
- :func:`output_folder` yields a fresh folder beside ``out``; on success it replaces ``out``. Only an
  empty folder or one that prunekit wrote (it holds ``prunekit.json``) is ever replaced, and only with
  ``overwrite=True``; the folder is locked for the whole ``with`` block, so a second run writing the
  same folder fails at once.
- :func:`check_writable` and :func:`check_output_folder` find an output that can never be written
  before any work is done.

The swap is kill-safe. On Linux the new and the old folder are exchanged in one ``renameat2`` call, so
``out`` always holds one complete version. Elsewhere the old folder is first renamed to a hidden
``.<name>.prunekit-old-…`` and the new one renamed onto ``out``; a run killed between the two renames
leaves the old folder hidden, and the next call for the same ``out`` puts it back. Temporaries carry
the writer's process id (``.<name>.prunekit-{tmp,new,old}-<pid>-<random>``), so those of dead processes
are removed on the next run, and those of live ones are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

from .fsops import (OutputBusyError, OutputLock, alive, file_mode, fsync_dir, fsync_file, remove, remove_scratch,
                    scratch_folder, signals_held, stem, tags, umask)

__all__ = ["MARKER", "OutputBusyError", "OutputError", "atomic_file", "check_distinct", "check_output_folder",
           "check_writable",
           "is_prunekit_folder", "output_folder", "recover", "remove_scratch", "scratch_folder", "umask"]

MARKER = "prunekit.json"

# Test hook: called with the name of each step of a save; tests install one that kills the process.
_STEP_HOOK: Callable[[str], None] | None = None
# Whether to try Linux's atomic exchange of two folders (tests turn it off to test the fallback).
USE_EXCHANGE = True


class OutputError(ValueError):
    """An output path that cannot or may not be written (the message says why and what to do)."""


def _step(name: str) -> None:
    if _STEP_HOOK is not None:
        _STEP_HOOK(name)


# ---------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; write the file there. On success it is fsynced,
    given the umask's permissions and renamed onto ``path``; on any failure (Ctrl-C included) it is
    removed and ``path`` is left as it was. The temporary keeps ``path``'s suffix."""
    target = Path(path).absolute()
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{parent}: no such folder to write {target.name} into")
    if target.is_dir():
        raise OutputError(f"{target} is a folder; expected a file path")
    for kind, pid, p in tags(parent, target.name):
        if kind == "tmp" and not alive(pid):
            remove(p)
    fd, name = tempfile.mkstemp(prefix=f".{stem(target.name)}.prunekit-tmp-{os.getpid()}-",
                                suffix=target.suffix, dir=parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _step("file-written")
        os.chmod(tmp, file_mode(tmp, umask()))
        fsync_file(tmp)
        _step("file-synced")
        os.replace(tmp, target)
        _step("file-replaced")
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ------------------------------------------------------------------------------------ several paths

def _paths(value: object) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [] if os.fspath(value) == "" else [Path(os.path.realpath(os.path.expanduser(os.fspath(value))))]
    return [p for v in value for p in _paths(v)]  # type: ignore[attr-defined]


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_distinct(outputs: dict[str, object], inputs: dict[str, object] | None = None) -> None:
    """Raise :class:`OutputError` before any work when two outputs are one path (or one holds the other),
    or an output is an input or holds one (replacing it would lose the input). Keys are the flags the
    user typed (``"--out"``), values paths, lists of paths or None (not given)."""
    outs = [(flag, p) for flag, value in outputs.items() for p in _paths(value)]
    for i, (fa, a) in enumerate(outs):
        for fb, b in outs[i + 1:]:
            if _same(a, b) or a in b.parents or b in a.parents:
                how = "are the same path" if _same(a, b) else "are one inside the other"
                raise OutputError(f"{fa} and {fb} {how} ({a}{'' if _same(a, b) else f', {b}'}): one output would "
                                  "replace or delete the other. Give each output its own path")
    for flag, value in (inputs or {}).items():
        for i in _paths(value):
            for fo, o in outs:
                if _same(o, i) or o in i.parents:
                    how = "is" if _same(o, i) else "holds"
                    raise OutputError(f"{fo} {o} {how} the input {flag} {i}: writing it would destroy the input. "
                                      f"Choose another {fo}")


# -------------------------------------------------------------------------------------------- folders


def _resolve(out: str | os.PathLike) -> Path:
    """The absolute output path, with symlinks resolved (a link to a folder replaces the folder)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(out))))


def is_prunekit_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``prunekit.json`` that prunekit wrote (a JSON object with ``prunekit_version``)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "prunekit_version" in data


def _state(out: Path) -> str:
    """missing | empty | prunekit | foreign (a folder with other files) | file (not a folder)."""
    if not os.path.lexists(out):
        return "missing"
    if not out.is_dir():
        return "file"
    try:
        with os.scandir(out) as it:
            if next(it, None) is None:
                return "empty"
    except OSError as exc:
        raise OutputError(f"--out {out} cannot be read ({exc.strerror}); choose another folder") from None
    return "prunekit" if is_prunekit_folder(out) else "foreign"


def _refuse(out: Path, state: str, overwrite: bool) -> None:
    """Raise when ``out`` may not be replaced; say why and what to do."""
    cwd = Path(os.path.realpath(os.getcwd()))
    if state != "missing" and (out == cwd or out in cwd.parents):
        raise OutputError(f"--out {out} is the current folder or holds it; prunekit never replaces it. "
                          "Choose a new folder such as pruned/")
    if state == "file":
        raise OutputError(f"--out {out} is a file, not a folder; prunekit writes a folder. "
                          "Choose another path (the file is left as it is)")
    if state == "foreign":
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputError(f"--out {out} holds files prunekit did not write ({shown}; no {MARKER}); "
                          "it is never replaced, even with --overwrite. Choose an empty or new folder")
    if state == "prunekit" and not overwrite:
        raise OutputError(f"--out {out} exists and is not empty (a folder prunekit wrote); pass --overwrite "
                          "(overwrite=True) to replace it, or choose another folder")


def check_writable(out: str | os.PathLike, needed_bytes: int | None = None) -> None:
    """Raise :class:`OutputError` now if folder ``out`` can never be written: a path below a file,
    a read-only or system folder, or (with ``needed_bytes``) too little free space. Changes nothing."""
    target = _resolve(out)
    probe_in = target.parent
    while not os.path.lexists(probe_in):
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputError(f"--out {target} cannot be created: {probe_in} is a file, not a folder")
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"--out {target} is a file, not a folder; prunekit writes a folder. "
                          "Choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=".prunekit-probe-", dir=probe_in)
    except OSError as exc:
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
               errno.EPERM: "is not writable (operation not permitted)",
               errno.ENOENT: "does not take new files (a system folder)"}.get(
            exc.errno, f"cannot be written ({exc.strerror})")
        raise OutputError(f"--out {target} cannot be written: {probe_in} {why}. Choose a folder you "
                          "can write") from None
    os.rmdir(probe)
    if needed_bytes is not None:
        free = shutil.disk_usage(probe_in).free
        if free < needed_bytes:
            raise OutputError(f"--out {target}: {probe_in} has {free / 1e6:,.0f} MB free; about "
                              f"{needed_bytes / 1e6:,.0f} MB are needed. Free some space or choose another disk")


def recover(out: str | os.PathLike) -> list[str]:
    """Finish what an interrupted save of ``out`` left: put a hidden old folder back when ``out`` is
    missing, and remove the temporaries of dead processes. Returns what was done (for messages)."""
    target = _resolve(out)
    if not target.parent.is_dir():
        return []
    with OutputLock(target):
        return _recover_locked(target)


def _recover_locked(out: Path) -> list[str]:
    done: list[str] = []
    olds = []
    for kind, pid, path in tags(out.parent, out.name):
        if kind == "old":  # every swap runs under the lock we hold, so any old folder is a leftover
            olds.append(path)
        elif not alive(pid):
            remove(path)
            done.append(f"removed {path.name}, left by a run that was stopped")
    if olds and not os.path.lexists(out):
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.rename(newest, out)
        olds.remove(newest)
        done.append(f"restored {out} from {newest.name}: an earlier save was stopped while replacing it")
    for path in olds:
        remove(path)
        done.append(f"removed {path.name}, the old version an earlier save had replaced")
    return done


def check_output_folder(out: str | os.PathLike, overwrite: bool = False, needed_bytes: int | None = None) -> Path:
    """Every check :func:`output_folder` makes, done now (before a long run): ``out`` can be written,
    and it is missing, empty, or (with ``overwrite``) a folder prunekit wrote. Repairs what an
    interrupted save left. Returns the resolved path."""
    target = _resolve(out)
    check_writable(target, needed_bytes)
    for note in recover(target):
        warnings.warn(note, stacklevel=2)
    _refuse(target, _state(target), overwrite)
    return target


def _make_parents(folder: Path) -> list[Path]:
    created = []
    p = folder
    while not os.path.lexists(p):
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _finish_tree(folder: Path, mask: int) -> None:
    """Give everything under ``folder`` the umask's permissions and flush it to disk."""
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            p = Path(root, f)
            if p.is_symlink():
                continue
            os.chmod(p, file_mode(p, mask))
            fsync_file(p)
        fsync_dir(Path(root))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not USE_EXCHANGE:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if not is_prunekit_folder(tmp):
        raise OutputError(f"output_folder: nothing was saved to {out}: the new folder has no {MARKER} "
                          "(a JSON object with prunekit_version), the mark of a folder prunekit wrote")
    mask = umask()
    _finish_tree(tmp, mask)
    os.chmod(tmp, 0o777 & ~mask)
    _step("synced")
    state = _state(out)
    try:
        _refuse(out, state, overwrite)
    except OutputError as exc:
        raise OutputError(f"{exc} (it changed while this run worked; nothing was replaced)") from None
    old: Path | None = None
    with signals_held():
        if state in ("missing", "empty"):
            try:
                os.replace(tmp, out)  # rename(2) replaces an empty folder atomically
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise OutputError(f"--out {out} was filled by something else while this run worked; "
                                      "nothing was replaced") from None
                raise
            _step("replaced")
        elif _exchange(tmp, out):
            _step("exchanged")
            old = tmp  # the old version now lives under the temporary's name
        else:
            old = out.parent / f".{stem(out.name)}.prunekit-old-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(out, old)
            _step("moved-old")
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            _step("moved-new")
        fsync_dir(out.parent)
    if old is not None:
        remove(old)
        _step("removed-old")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh, empty folder beside ``out``; write everything there, ``prunekit.json`` included.

    On success the folder is fsynced, given the umask's permissions and swapped in as ``out``; on any
    failure (Ctrl-C included) it is removed and ``out`` is left as it was. ``out`` must be missing,
    empty, or (with ``overwrite``) a folder prunekit wrote: any other folder is refused, even with
    ``overwrite``. ``out`` is locked until the block ends, so a second writer fails with
    :class:`OutputBusyError` instead of replacing this one's output.
    """
    target = _resolve(out)
    check_writable(target)
    created = _make_parents(target.parent)
    try:
        with OutputLock(target):
            for note in _recover_locked(target):
                warnings.warn(note, stacklevel=3)
            _refuse(target, _state(target), overwrite)
            tmp = Path(tempfile.mkdtemp(prefix=f".{stem(target.name)}.prunekit-new-{os.getpid()}-",
                                        dir=target.parent))
            try:
                os.chmod(tmp, 0o777 & ~umask())
                _step("created")
                yield tmp
                _step("written")
                _commit(tmp, target, overwrite)
            finally:
                if tmp.exists():
                    remove(tmp)
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


