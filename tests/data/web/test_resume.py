"""Interrupted runs: a process killed with SIGKILL mid-way, then the same call again."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from prunekit.data import EmbeddingStore, dedup, embed_shards

from .conftest import planted, write_shards

ENCODER = """
import zlib, numpy as np
def encode(texts):
    rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts]
    return np.stack(rows).astype(np.float32)
"""


def _run(script: str, tmp: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[3] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "prunekit-tmp" in p.name or "prunekit-lock" in p.name)


def test_embed_killed_inside_a_shard_resumes_without_losing_or_repeating_rows(tmp_path):
    x = planted(n=400, d=3, dups=0)[0]
    write_shards(tmp_path / "in", x, [100, 100, 100, 100])
    script = ENCODER + f"""
import os, signal
from prunekit.data import embed_shards
calls = [0]
def encode_and_die(texts):  # dies in the middle of the third shard, with its temporary file half-written
    calls[0] += 1
    if calls[0] == 1 + 2 * 2 + 2:  # the width probe, two shards of 2 chunks (80 + 20 rows), 2 chunks of the third
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(texts)
encode_and_die.__qualname__ = "encode"  # the same encoder, as far as the folder's plan can tell
embed_shards({str(tmp_path / 'in')!r}, {str(tmp_path / 'emb')!r}, model=encode_and_die, batch_size=5,
             dtype="float32", progress=False)
"""
    assert _run(script, tmp_path) == -9
    done = sorted(p.name for p in (tmp_path / "emb").glob("part-*.npy") if ".index" not in p.name)
    assert done == ["part-00000.npy", "part-00001.npy"]  # two shards complete, the third was cut
    assert any("prunekit-tmp" in p.name for p in (tmp_path / "emb").iterdir())  # its partial temporary
    exec(ENCODER, ns := {})
    rep = embed_shards(tmp_path / "in", tmp_path / "emb", model=ns["encode"], batch_size=5, dtype="float32",
                       progress=False)
    assert (rep.written, rep.skipped) == (2, 2)  # the first two are not redone
    embed_shards(tmp_path / "in", tmp_path / "clean", model=ns["encode"], batch_size=5, dtype="float32",
                 progress=False)
    store, clean = EmbeddingStore.open(tmp_path / "emb"), EmbeddingStore.open(tmp_path / "clean")
    for i in range(4):
        assert np.array_equal(store.rows(i), clean.rows(i))
        assert np.load(tmp_path / f"emb/part-{i:05d}.index.npy").tolist() == list(range(100 * i, 100 * i + 100))
    assert store.n == 400 and _leftovers(tmp_path / "emb") == []


@pytest.mark.parametrize("kill_at", [4])  # the marker, the centroids, then mid-way through the assignment files
def test_dedup_killed_mid_way_resumes_to_the_same_result(tmp_path, kill_at):
    x, _, _ = planted(n=1500, d=12, dups=100)
    write_shards(tmp_path / "in", x, [400, 400, 700])
    embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", dtype="float32", progress=False)
    script = f"""
import os, signal
import prunekit.infra.atomic as atomic
from prunekit.data import dedup
seen = [0]
def hook(step):  # SIGKILL right after the {kill_at}th file of the run is in place
    if step == "file-replaced":
        seen[0] += 1
        if seen[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
atomic._STEP_HOOK = hook
dedup({str(tmp_path / 'emb')!r}, n_clusters=6, eps=0.05, partition_rows=300, out={str(tmp_path / 'keep.npy')!r},
      progress=False)
"""
    assert _run(script, tmp_path) == -9
    assert not (tmp_path / "keep.npy").exists() and (tmp_path / "keep.npy.work").is_dir()
    said = []
    resumed = dedup(tmp_path / "emb", n_clusters=6, eps=0.05, partition_rows=300, out=tmp_path / "keep.npy",
                    progress=False, say=said.append)
    assert not any("k-means" in m for m in said)  # the centroids of the killed run are reused
    clean = dedup(tmp_path / "emb", n_clusters=6, eps=0.05, partition_rows=300, progress=False)
    assert np.array_equal(np.load(tmp_path / "keep.npy"), clean.indices)
    assert resumed.cluster_removed.tolist() == clean.cluster_removed.tolist()
    assert not (tmp_path / "keep.npy.work").exists() and _leftovers(tmp_path) == []


def test_nan_embeddings_stop_dedup_and_leave_nothing_behind(tmp_path):
    x = planted(n=300, d=4, dups=0)[0]
    x[217, 2] = np.nan
    np.save(tmp_path / "emb.npy", x)
    with pytest.raises(ValueError, match=r"1 embeddings hold NaN or infinite values \(first at examples \[217\]\)"):
        dedup(tmp_path / "emb.npy", n_clusters=3, eps=0.1, sample=300, out=tmp_path / "keep.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]
    x[217, 2] = 0.0
    x[5] = 0.0
    np.save(tmp_path / "emb.npy", x)
    with pytest.raises(ValueError, match=r"all zeros \(first at examples \[5\]\)"):
        dedup(tmp_path / "emb.npy", n_clusters=3, eps=0.1, out=tmp_path / "keep.parquet")


def test_a_damaged_shard_of_another_width_is_an_error(tmp_path):
    x = planted(n=100, d=4, dups=0)[0]
    write_shards(tmp_path / "in", x, [50, 50])
    embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", dtype="float32", progress=False)
    np.save(tmp_path / "emb/part-00001.npy", np.zeros((50, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"holds \(50, 5\) embeddings, the folder's table says \(50, 4\)"):
        dedup(tmp_path / "emb", n_clusters=2, eps=0.1)


def test_outputs_are_not_replaced_without_overwrite(tmp_path):
    np.save(tmp_path / "emb.npy", planted(n=200, d=4, dups=0)[0])
    np.save(tmp_path / "keep.npy", np.array([7]))  # an array file: replaced only with overwrite
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, out=tmp_path / "keep.npy")
    assert np.load(tmp_path / "keep.npy").tolist() == [7]
    rep = dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, out=tmp_path / "keep.npy", overwrite=True,
                progress=False)
    assert len(np.load(tmp_path / "keep.npy")) == rep.kept


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path):
    from prunekit.infra.fsops import OutputBusyError, OutputLock

    np.save(tmp_path / "emb.npy", planted(n=200, d=4, dups=0)[0])
    with OutputLock(tmp_path / "keep.npy.work"):  # what a running dedup on keep.npy holds
        with pytest.raises(OutputBusyError, match="being written by another prunekit run"):
            dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, out=tmp_path / "keep.npy", progress=False)
    assert not (tmp_path / "keep.npy").exists()
