"""Files are never lost: atomic files, output folders that replace only what prunekit wrote, locks,
and saves that survive SIGKILL and Ctrl-C at every step."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from prunekit.infra import atomic
from prunekit.infra.atomic import (OutputBusyError, OutputError, atomic_file, check_output_folder, check_writable,
                                  output_folder, recover, scratch_folder)

CORE = Path(atomic.__file__).parent


def _marker(folder: Path, version: str = "new") -> None:
    (folder / "prunekit.json").write_text(json.dumps({"prunekit_version": "0.1.0", "tag": version}))


def _tag(folder: Path) -> str:
    return json.loads((folder / "prunekit.json").read_text())["tag"]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------------------- atomic_file


def test_atomic_file_writes_with_umask_permissions_and_leaves_no_temporary(tmp_path, umask_027):
    target = tmp_path / "w.safetensors"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors"
        assert tmp.name != "w.safetensors.tmp" and not target.exists()
        tmp.write_bytes(b"abc")
        os.chmod(tmp, 0o600)  # as safetensors' save_file leaves its files
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_file_failure_keeps_the_old_file_and_the_users_own_tmp(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    (tmp_path / "w.bin.tmp").write_bytes(b"user's own")
    for error in (RuntimeError("disk on fire"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_file(target) as tmp:
                tmp.write_bytes(b"half")
                raise error
    assert target.read_bytes() == b"old" and (tmp_path / "w.bin.tmp").read_bytes() == b"user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin", "w.bin.tmp"]


def test_concurrent_atomic_files_to_one_path_get_their_own_temporaries(tmp_path):
    target = tmp_path / "w.bin"
    with atomic_file(target) as a, atomic_file(target) as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the last to finish wins, whole
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_file_removes_temporaries_of_dead_writers_only(tmp_path):
    dead = tmp_path / f".w.bin.prunekit-tmp-{_dead_pid()}-abc123.bin"
    live = tmp_path / f".w.bin.prunekit-tmp-{os.getppid()}-abc123.bin"
    dead.write_bytes(b"x"), live.write_bytes(b"y")
    with atomic_file(tmp_path / "w.bin") as tmp:
        tmp.write_bytes(b"z")
    assert not dead.exists() and live.exists()


def test_atomic_file_into_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        with atomic_file(tmp_path / "nope" / "w.bin"):
            pass


# --------------------------------------------------------------------------------------- output_folder


def test_output_folder_writes_a_new_folder_with_umask_permissions(tmp_path, umask_027):
    out = tmp_path / "a" / "b" / "pruned"
    with output_folder(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".pruned.prunekit-new-")
        _marker(tmp)
        (tmp / "model.safetensors").write_bytes(b"w")
        os.chmod(tmp / "model.safetensors", 0o600)
    assert _tag(out) == "new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o640
    assert os.listdir(out.parent) == ["pruned"]  # no lock file, no temporary


def test_overwrite_replaces_only_a_folder_prunekit_wrote(tmp_path):
    out = tmp_path / "pruned"
    out.mkdir()
    _marker(out, "old")
    (out / "extra.bin").write_bytes(b"old")
    with pytest.raises(OutputError, match="exists and is not empty .*pass --overwrite"):
        with output_folder(out):
            pass
    assert _tag(out) == "old"
    with output_folder(out, overwrite=True) as tmp:
        _marker(tmp, "new")
    assert _tag(out) == "new" and not (out / "extra.bin").exists()
    assert os.listdir(tmp_path) == ["pruned"]


@pytest.mark.parametrize("content", [{"src/main.py": "print(1)"}, {"notes.txt": "mine"},
                                     {"prunekit.json": "{\"my\": \"project settings\"}"}])
def test_a_folder_prunekit_did_not_write_is_never_replaced_even_with_overwrite(tmp_path, content):
    out = tmp_path / "project"
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for check in (lambda: check_output_folder(out, overwrite=True),
                  lambda: output_folder(out, overwrite=True).__enter__()):
        with pytest.raises(OutputError, match="prunekit did not write .*never replaced, even with --overwrite"):
            check()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert os.listdir(tmp_path) == ["project"]


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    out = tmp_path / "pruned"
    out.mkdir()
    _marker(out, "old")
    monkeypatch.chdir(out)
    for spec in (".", str(out), str(tmp_path)):
        with pytest.raises(OutputError, match="current folder"):
            check_output_folder(spec, overwrite=True)
    assert _tag(out) == "old"


def test_an_empty_folder_is_replaced_and_a_file_is_refused(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with output_folder(out) as tmp:
        _marker(tmp)
    assert _tag(out) == "new"
    f = tmp_path / "file.txt"
    f.write_text("keep")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with output_folder(f, overwrite=True):
            pass
    assert f.read_text() == "keep"


def test_a_link_to_a_pruned_folder_keeps_pointing_at_the_new_one(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    _marker(real, "old")
    link = tmp_path / "link"
    link.symlink_to(real)
    with output_folder(link, overwrite=True) as tmp:
        _marker(tmp, "new")
    assert link.is_symlink() and _tag(link) == "new" and _tag(real) == "new"


@pytest.mark.parametrize("error", [RuntimeError("pruning failed"), KeyboardInterrupt()])
def test_a_failure_inside_leaves_out_as_it_was_and_no_temporary(tmp_path, error):
    out = tmp_path / "pruned"
    out.mkdir()
    _marker(out, "old")
    with pytest.raises(type(error)):
        with output_folder(out, overwrite=True) as tmp:
            _marker(tmp, "new")
            (tmp / "big.bin").write_bytes(b"0" * 1000)
            raise error
    assert _tag(out) == "old" and os.listdir(tmp_path) == ["pruned"]
    with pytest.raises(RuntimeError):  # folders it made for a new out are removed too
        with output_folder(tmp_path / "x" / "y" / "z"):
            raise RuntimeError
    assert os.listdir(tmp_path) == ["pruned"]


def test_a_folder_without_prunekit_json_is_not_saved(tmp_path):
    with pytest.raises(OutputError, match="has no prunekit.json"):
        with output_folder(tmp_path / "o") as tmp:
            (tmp / "model.bin").write_bytes(b"w")
    assert os.listdir(tmp_path) == []


def test_a_second_writer_of_the_same_out_fails_at_once(tmp_path):
    out = tmp_path / "pruned"
    with output_folder(out) as tmp:
        with pytest.raises(OutputBusyError, match=f"being written by another prunekit run \\(pid {os.getpid()}\\)"):
            with output_folder(out):
                pass
        with pytest.raises(OutputBusyError):
            check_output_folder(out)
        _marker(tmp, "first")
    assert _tag(out) == "first" and os.listdir(tmp_path) == ["pruned"]


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "user-file", "folder"])
def test_a_lock_path_prunekit_did_not_make_is_refused_and_left_as_it_is(tmp_path, plant):
    from prunekit.infra.fsops import LockFileError

    victim = tmp_path / "notes.txt"
    victim.write_text("the user's own file")
    lock = tmp_path / ".pruned.prunekit-lock"
    if plant == "symlink":
        lock.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, lock)
    elif plant == "user-file":
        lock.write_text("the user's own file")
    else:
        lock.mkdir()
    with pytest.raises(LockFileError, match="the lock file .* prunekit did not make it"):
        with output_folder(tmp_path / "pruned") as tmp:
            _marker(tmp)
    assert victim.read_text() == "the user's own file"
    assert not (tmp_path / "pruned").exists()
    if plant == "user-file":
        assert lock.read_text() == "the user's own file"


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    for stale in ("prunekit-lock pid 999999\n", "12345", ""):  # this version's, an older version's, just created
        (tmp_path / ".pruned.prunekit-lock").write_text(stale)
        with output_folder(tmp_path / "pruned", overwrite=True) as tmp:
            assert (tmp_path / ".pruned.prunekit-lock").read_text() == f"prunekit-lock pid {os.getpid()}\n"
            _marker(tmp)
        assert not (tmp_path / ".pruned.prunekit-lock").exists()


def test_out_filled_by_someone_else_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "pruned"
    with pytest.raises(OutputError, match="prunekit did not write.*changed while this run worked"):
        with output_folder(out) as tmp:
            _marker(tmp)
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert os.listdir(out) == ["theirs.txt"] and os.listdir(tmp_path) == ["pruned"]
    out2 = tmp_path / "pruned2"
    with pytest.raises(OutputError, match="exists and is not empty"):  # another prunekit result, no --overwrite
        with output_folder(out2) as tmp:
            _marker(tmp, "mine")
            out2.mkdir()
            _marker(out2, "theirs")
    assert _tag(out2) == "theirs"


# ------------------------------------------------------------------------------------- check_writable


def test_check_writable_finds_paths_that_can_never_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out")
    with pytest.raises(OutputError, match="/proc does not take new files"):
        check_writable("/proc/out")
    with pytest.raises(OutputError, match="MB are needed"):
        check_writable(tmp_path / "out", needed_bytes=1 << 60)
    check_writable(tmp_path / "new" / "out")
    assert sorted(os.listdir(tmp_path)) == ["file"]  # a check changes nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_finds_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable(ro / "out")
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------ scratch folders


def test_scratch_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"prunekit-journal-{_dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / "0.pt").write_bytes(b"x" * 100)
    live = tmp_path / f"prunekit-journal-{os.getppid()}-abcd1234"
    live.mkdir()
    old_style = tmp_path / "prunekit-journal-abcd1234"  # no pid: cannot tell, left alone
    old_style.mkdir()
    folder = scratch_folder("prunekit-journal")
    assert folder.is_dir() and not stale.exists() and live.exists() and old_style.exists()
    atomic.remove_scratch(folder)
    assert not folder.exists()


# ------------------------------------------------------------------- kill and Ctrl-C in a subprocess

CHILD = r"""
import importlib.util, json, os, signal, sys, time, types
# Ctrl-C as in a terminal, even when the test runner was started with SIGINT ignored (a background job)
signal.signal(signal.SIGINT, signal.default_int_handler)
# load infra/fsops.py and infra/atomic.py alone (no torch): a child starts in a few milliseconds
for name in ("prunekit", "prunekit.core"):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = []
for name in ("fsops", "atomic"):
    spec = importlib.util.spec_from_file_location(f"prunekit.core.{name}", os.path.join(sys.argv[1], f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
atomic = module
mode, out, step, action, exchange = sys.argv[2:7]
atomic.USE_EXCHANGE = exchange == "1"

def hook(name):
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    open(out + ".ready", "w").close()  # pause: wait to be signalled
    time.sleep(30)

atomic._STEP_HOOK = hook
if mode == "folder":
    with atomic.output_folder(out, overwrite=True) as tmp:
        (tmp / "model.bin").write_bytes(b"new" * 1000)
        (tmp / "prunekit.json").write_text(json.dumps({"prunekit_version": "0.1.0", "tag": "new"}))
else:
    with atomic.atomic_file(out) as tmp:
        tmp.write_bytes(b"new" * 1000)
"""


def _child(mode, out, step, action="kill", exchange=True):
    args = [sys.executable, "-c", CHILD, str(CORE), mode, str(out), step, action, "1" if exchange else "0"]
    return subprocess.Popen(args, stderr=subprocess.PIPE)


COMMON_STEPS = [("created", "old"), ("written", "old"), ("synced", "old"), ("removed-old", "new")]
FOLDER_STEPS = ([(True, *s) for s in COMMON_STEPS + [("exchanged", "new")]]
                + [(False, *s) for s in COMMON_STEPS + [("moved-old", "old"), ("moved-new", "new")]])


@pytest.mark.parametrize("exchange, step, expected", FOLDER_STEPS,
                         ids=[f"{'exchange' if e else 'two-renames'}-{s}" for e, s, _ in FOLDER_STEPS])
def test_a_save_killed_at_any_step_leaves_one_whole_version(tmp_path, step, expected, exchange):
    out = tmp_path / "pruned"
    out.mkdir()
    _marker(out, "old")
    (out / "model.bin").write_bytes(b"old" * 1000)
    proc = _child("folder", out, step, exchange=exchange)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    if exchange:  # out is never missing, not even before the next run
        assert _tag(out) in ("old", "new")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        check_output_folder(out, overwrite=True)  # what the next run does first
    if step == "moved-old":
        assert any("restored" in str(n.message) for n in notes)
    assert _tag(out) == expected
    assert (out / "model.bin").read_bytes() == expected.encode() * 1000
    assert os.listdir(tmp_path) == ["pruned"]  # temporaries, hidden old folders and the lock are gone


@pytest.mark.parametrize("step, expected", [("file-written", b"old"), ("file-synced", b"old"),
                                            ("file-replaced", b"new" * 1000)])
def test_a_file_write_killed_at_any_step_leaves_one_whole_version(tmp_path, step, expected):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    proc = _child("file", target, step)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == expected
    with atomic_file(target) as tmp:  # the next write sweeps the dead writer's temporary
        tmp.write_bytes(expected)
    assert os.listdir(tmp_path) == ["w.bin"]


@pytest.mark.parametrize("step", ["written", "synced"])
def test_ctrl_c_during_a_save_removes_the_partial_folder(tmp_path, step):
    out = tmp_path / "pruned"
    out.mkdir()
    _marker(out, "old")
    proc = _child("folder", out, step, action="pause")
    ready = Path(str(out) + ".ready")
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert any(n.startswith(".pruned.prunekit-new-") for n in os.listdir(tmp_path))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr.read()
    ready.unlink()
    assert _tag(out) == "old" and os.listdir(tmp_path) == ["pruned"]


def test_recover_restores_an_old_folder_hidden_by_a_killed_swap(tmp_path):
    out = tmp_path / "pruned"
    old = tmp_path / f".pruned.prunekit-old-{_dead_pid()}-abcd"
    old.mkdir()
    _marker(old, "old")
    new = tmp_path / f".pruned.prunekit-new-{_dead_pid()}-efgh"
    new.mkdir()
    notes = recover(out)
    assert any("restored" in n for n in notes)
    assert _tag(out) == "old" and os.listdir(tmp_path) == ["pruned"]


# ------------------------------------------------------------------------------------- check_distinct


def test_check_distinct_refuses_shared_outputs_and_outputs_over_inputs(tmp_path, monkeypatch):
    from prunekit.infra.atomic import check_distinct

    monkeypatch.chdir(tmp_path)
    (tmp_path / "emb").mkdir()
    (tmp_path / "scores.npy").write_bytes(b"x")
    os.link(tmp_path / "scores.npy", tmp_path / "hard.npy")
    check_distinct({"--out": "keep.npy", "--pairs-out": "pairs.parquet", "--work": "w", "--x": None},
                   {"--emb": "emb", "--subset": ["scores.npy", None]})
    with pytest.raises(OutputError, match="--out and --pairs-out are the same path"):
        check_distinct({"--out": "x.parquet", "--pairs-out": str(tmp_path / "x.parquet")})
    with pytest.raises(OutputError, match="--out and --work are one inside the other"):
        check_distinct({"--out": "w/keep.npy", "--work": "w"})  # removing the work folder would delete --out
    with pytest.raises(OutputError, match="--out .* is the input --scores"):
        check_distinct({"--out": "hard.npy"}, {"--scores": "scores.npy"})  # one file under two names
    with pytest.raises(OutputError, match="--out .* holds the input --emb"):
        check_distinct({"--out": "."}, {"--emb": "emb"})
