"""The work folder of ``dedup``/``density``: prunekit removes only what it made, never a folder that was
there before, never the current folder or a parent; outputs never share a path or replace an input."""

import os

import numpy as np
import pytest

from prunekit.infra.atomic import OutputError
from prunekit.data import dedup, density

from .conftest import planted


@pytest.fixture
def emb(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, planted(n=120, d=4, dups=10)[0])
    return path


@pytest.mark.parametrize("fn", [dedup, density])
def test_an_empty_work_folder_that_existed_is_emptied_and_kept(emb, tmp_path, fn):
    work = tmp_path / "mine"
    work.mkdir()
    kw = {"eps": 0.1} if fn is dedup else {"keep": 0.5}
    fn(emb, n_clusters=4, out=tmp_path / "keep.npy", work=work, progress=False, **kw)
    assert work.is_dir() and os.listdir(work) == []
    assert (tmp_path / "keep.npy").is_file()
    fn(emb, n_clusters=4, out=tmp_path / "keep2.npy", work=tmp_path / "new", progress=False, **kw)
    assert not (tmp_path / "new").exists()  # made by prunekit: removed after success


@pytest.mark.parametrize("work", [".", ".."])
def test_the_current_folder_or_a_parent_is_never_a_work_folder(emb, tmp_path, monkeypatch, work):
    here = tmp_path / "empty" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    with pytest.raises(ValueError, match="is the current folder or holds it"):
        dedup(emb, n_clusters=4, eps=0.1, out=tmp_path / "keep.npy", work=work, progress=False)
    assert here.is_dir() and os.listdir(here) == [] and os.listdir(here.parent) == ["here"]
    assert not (tmp_path / "keep.npy").exists()


def test_outputs_sharing_a_path_or_replacing_an_input_are_refused(emb, tmp_path):
    out = tmp_path / "x.parquet"
    with pytest.raises(OutputError, match="--out and --pairs-out are the same path"):
        dedup(emb, n_clusters=4, eps=0.1, out=out, pairs_out=out, progress=False)
    with pytest.raises(OutputError, match="--out and --work are one inside the other"):
        density(emb, n_clusters=4, keep=0.5, out=tmp_path / "w" / "k.npy", work=tmp_path / "w", progress=False)
    with pytest.raises(OutputError, match="is the input --emb"):
        dedup(emb, n_clusters=4, eps=0.1, out=emb, overwrite=True, progress=False)
    subset = tmp_path / "subset.npy"
    np.save(subset, np.arange(60))
    with pytest.raises(OutputError, match="is the input --subset"):
        density(emb, n_clusters=4, keep=0.5, subset=subset, out=subset, overwrite=True, progress=False)
    assert np.array_equal(np.load(subset), np.arange(60))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "subset.npy"]
