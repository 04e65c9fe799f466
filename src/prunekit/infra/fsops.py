"""File-system helpers under prunekit's safe writes: the umask, fsync, pid-tagged temporaries and
whether their writer lives, an flock that names its holder, signals held over a few system calls,
and scratch folders swept after dead runs."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterator


class OutputBusyError(RuntimeError):
    """Another process is writing the same output folder."""


class LockFileError(ValueError):
    """The lock path beside an output is something prunekit did not make (a link, a user's file)."""


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def stem(name: str) -> str:
    """A file name short enough to carry prunekit's temporary tags (long names are shortened + hashed)."""
    if len(name.encode()) <= 150:
        return name
    return f"{name[:80]}~{zlib.crc32(name.encode()):08x}"


_TAG = re.compile(r"(tmp|new|old)-(\d+)-[a-z0-9_]+")


def tags(folder: Path, name: str) -> Iterator[tuple[str, int, Path]]:
    """(kind, pid, path) of prunekit's temporaries for ``name`` inside ``folder``."""
    prefix = f".{stem(name)}.prunekit-"
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix):
            m = _TAG.match(entry.name[len(prefix):])
            if m:
                yield m.group(1), int(m.group(2)), Path(entry.path)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_mode(path: Path, mask: int) -> int:
    executable = os.stat(path).st_mode & 0o111
    return (0o666 | executable) & ~mask


_LOCK_TEXT = "prunekit-lock pid "
_LOCK_FORMAT = re.compile(r"(prunekit-lock pid )?\d*\s*$")  # ours; an older prunekit wrote the bare pid


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``.<name>.prunekit-lock`` beside ``out``, removed on release.

    The lock file is opened without following links (``O_NOFOLLOW``) and used only when it is a plain file
    with one name that prunekit made (empty, or ``prunekit-lock pid N``): a planted link, a hard link or a
    user's file of that name is refused and left as it is, never truncated or written."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{stem(out.name)}.prunekit-lock"
        self.fd: int | None = None

    def _refuse(self, why: str) -> LockFileError:
        return LockFileError(f"--out {self.out}: the lock file {self.path} {why}; prunekit did not make it and "
                             "leaves it as it is. Remove it if it is not yours, or choose another output")

    def _open(self) -> int:
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666 & ~umask())
        except FileExistsError:
            pass
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:  # its holder removed it between our two opens: try again
            return -1
        except IsADirectoryError:
            raise self._refuse("is a folder") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(self.path):
                raise self._refuse("is a symbolic link") from None
            raise
        st = os.fstat(fd)
        why = ("is not a plain file" if not stat.S_ISREG(st.st_mode) else
               "has other names (a hard link)" if st.st_nlink > 1 else
               "is not a lock prunekit wrote" if st.st_size > 64 or not _LOCK_FORMAT.match(
                   os.pread(fd, 64, 0).decode(errors="replace")) else None)
        if why:
            os.close(fd)
            raise self._refuse(why)
        return fd

    def __enter__(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the re-check before the swap still refuses a filled --out
            return self
        while True:
            fd = self._open()
            if fd < 0:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 64).decode(errors="replace").strip()
                holder = text.removeprefix(_LOCK_TEXT).strip() or "?"
                os.close(fd)
                raise OutputBusyError(
                    f"--out {self.out} is being written by another "
                    f"prunekit run (pid {holder}); wait for it to finish or choose another folder") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been removed by its last holder between our open and our lock
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)  # a file checked above to be an (empty or stale) prunekit lock
                os.pwrite(fd, f"{_LOCK_TEXT}{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the few system calls of a swap (they arrive right after it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_SCRATCH: set[Path] = set()
_SCRATCH_AT_EXIT = False


def scratch_folder(prefix: str) -> Path:
    """A private temporary folder ``<tmp>/<prefix>-<pid>-<random>`` for work files (e.g. weight copies);
    those left by dead processes are removed first, and any still open are removed at exit."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"-(\d+)-[a-z0-9_]+$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            m = pattern.match(entry.name)
            if m and not alive(int(m.group(1))):
                remove(Path(entry.path))
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=base))
    global _SCRATCH_AT_EXIT
    if not _SCRATCH_AT_EXIT:
        import atexit

        atexit.register(_remove_all_scratch)
        _SCRATCH_AT_EXIT = True
    _SCRATCH.add(folder)
    return folder


def remove_scratch(folder: str | os.PathLike) -> None:
    """Delete a folder made by :func:`scratch_folder`."""
    path = Path(folder)
    _SCRATCH.discard(path)
    remove(path)


def _remove_all_scratch() -> None:
    for folder in list(_SCRATCH):
        remove_scratch(folder)
