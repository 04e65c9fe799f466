"""Helpers for the web-scale tests: shards of planted near-duplicates, written as Parquet."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def planted(n=2000, d=24, dups=150, noise=0.01, seed=0):
    """``n`` random unit-ish vectors, of which ``dups`` are near-copies of other rows; returns
    (vectors, copy indices, their originals)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    copies = rng.choice(n, dups, replace=False)
    pool = np.setdiff1d(np.arange(n), copies)
    originals = rng.choice(pool, dups, replace=False)
    x[copies] = x[originals] + noise * rng.standard_normal((dups, d)).astype(np.float32)
    return x, copies, originals


def write_shards(folder, x, sizes, fixed=True, texts=True):
    """Parquet shards of ``x`` (rows split by ``sizes``) with columns text, emb, id."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, size in enumerate(sizes):
        chunk = x[start:start + size]
        flat = pa.array(chunk.reshape(-1).astype(np.float32))
        emb = pa.FixedSizeListArray.from_arrays(flat, x.shape[1]) if fixed else \
            pa.array([row.tolist() for row in chunk], type=pa.list_(pa.float32()))
        cols = {"emb": emb, "id": [f"doc-{start + j}" for j in range(len(chunk))]}
        if texts:
            cols["text"] = [f"passage number {start + j} about topic {(start + j) % 7}" for j in range(len(chunk))]
        path = folder / f"shard-{i:03d}.parquet"
        pq.write_table(pa.table(cols), path)
        paths.append(path)
        start += size
    assert start == len(x)
    return paths


def assignment(work, n):
    """The run's own nearest centroid and similarity to it for each of ``n`` rows (``work/assign``, kept
    with ``keep_work=True``): a reference built on them makes the same discrete choices as the run, where
    recomputed similarities could tip a near-tie the other way."""
    labels, sims = np.full(n, -1), np.full(n, np.nan, dtype=np.float32)
    for f in sorted((work / "assign").glob("*.index.npy")):
        stem = str(f)[: -len(".index.npy")]
        idx = np.load(f)
        labels[idx], sims[idx] = np.load(stem + ".cluster.npy"), np.load(stem + ".sim.npy")
    assert (labels >= 0).all()
    return labels, sims


@pytest.fixture
def planted_emb(tmp_path):
    """An embedding folder (float32, 4 shards) of 2000 vectors with 150 planted near-copies."""
    from prunekit.data import embed_shards

    x, copies, originals = planted()
    write_shards(tmp_path / "shards", x, [600, 500, 0, 900])
    embed_shards(tmp_path / "shards", tmp_path / "emb", embedding_column="emb", dtype="float32", progress=False)
    return tmp_path / "emb", x, copies, originals
