import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prunekit.data import EmbeddingStore, dedup, embed_shards, embed_texts

from .conftest import planted, write_shards


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_precomputed_embeddings_become_shards_with_their_indices_and_ids(tmp_path):
    x = planted(n=300, d=6, dups=0)[0]
    write_shards(tmp_path / "in", x, [100, 0, 200])
    rep = embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", id_column="id", dtype="float32",
                       progress=False)
    assert (rep.n, rep.dim, rep.shards, rep.written, rep.skipped) == (300, 6, 3, 3, 0)
    assert np.array_equal(np.load(tmp_path / "emb/part-00000.npy"), x[:100])
    assert np.array_equal(np.load(tmp_path / "emb/part-00002.npy"), x[100:])
    assert np.load(tmp_path / "emb/part-00002.index.npy").tolist() == list(range(100, 300))
    ids = pq.read_table(tmp_path / "emb/part-00002.ids.parquet").to_pydict()
    assert ids["id"][:2] == ["doc-100", "doc-101"] and ids["index"][:2] == [100, 101]
    store = EmbeddingStore.open(tmp_path / "emb")
    assert (store.n, store.dim, [s.offset for s in store.shards]) == (300, 6, [0, 100, 100])
    again = embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", id_column="id", dtype="float32",
                         progress=False)
    assert (again.written, again.skipped) == (0, 3)  # already complete: nothing is redone


def test_float16_parquet_shards_read_back_as_the_same_vectors(tmp_path):
    x = planted(n=120, d=5, dups=0)[0]
    write_shards(tmp_path / "in", x, [70, 50])
    embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", file_format="parquet", progress=False)
    table = pq.read_table(tmp_path / "emb/part-00001.parquet")
    assert table.column_names == ["index", "embedding"]
    assert table.schema.field("embedding").type.value_type == pa.float16()
    store = EmbeddingStore.open(tmp_path / "emb")
    got = np.concatenate([b for i in range(2) for _, b in store.batches(i, 32)])
    np.testing.assert_allclose(got, x.astype(np.float16).astype(np.float32))
    assert _files(tmp_path / "emb") == ["part-00000.parquet", "part-00001.parquet", "prunekit.json"]


def test_texts_are_encoded_like_embed_texts(tmp_path, tiny_encoder):
    x = planted(n=40, d=3, dups=0)[0]
    paths = write_shards(tmp_path / "in", x, [25, 15])
    rep = embed_shards(paths, tmp_path / "emb", column="text", model=tiny_encoder, batch_size=8, dtype="float32",
                       progress=False)
    assert rep.dim == 32
    texts = pq.read_table(paths[1]).column("text").to_pylist()
    # the same batches of 8 and 7 texts, the same padding: the same arithmetic, so the default rtol and a tiny atol
    np.testing.assert_allclose(np.load(tmp_path / "emb/part-00001.npy"), embed_texts(texts, tiny_encoder, batch_size=8),
                               atol=1e-6)
    info = json.loads((tmp_path / "emb/prunekit.json").read_text())
    assert info["complete"] and info["plan"]["model"] == str(tiny_encoder)


def test_a_callable_encoder_works_and_its_output_is_checked(tmp_path):
    x = planted(n=30, d=3, dups=0)[0]
    write_shards(tmp_path / "in", x, [30])
    rep = embed_shards(tmp_path / "in", tmp_path / "emb", model=lambda t: np.ones((len(t), 4)), progress=False)
    assert rep.dim == 4
    with pytest.raises(ValueError, match="NaN or infinite"):
        embed_shards(tmp_path / "in", tmp_path / "bad", model=lambda t: np.full((len(t), 4), np.nan), progress=False)
    with pytest.raises(ValueError, match="one vector per text"):
        embed_shards(tmp_path / "in", tmp_path / "bad", model=lambda t: np.ones((1, 4)), progress=False)


@pytest.mark.parametrize("file_format", ["npy", "parquet"])
def test_values_beyond_float16_are_refused_not_written_as_inf(tmp_path, file_format):
    x = planted(n=30, d=3, dups=0)[0]
    x[17, 1] = 7e4  # finite in float32, inf in float16
    write_shards(tmp_path / "in", x, [30])
    # precomputed vectors (refused by the scan before anything is written), and an encoder's output (refused
    # before the shard's vectors are written: its completion mark)
    for kwargs in ({"embedding_column": "emb"}, {"model": lambda t: x[:len(t)]}):
        with pytest.raises(ValueError, match=r"shard-000.parquet: 1 embeddings hold values beyond float16's range "
                                             r"±65504 \(first at rows \[17\].*--dtype float32"):
            embed_shards(tmp_path / "in", tmp_path / "emb", file_format=file_format, batch_size=64, progress=False,
                         **kwargs)
        assert not (tmp_path / "emb" / f"part-00000.{file_format}").exists()
    rep = embed_shards(tmp_path / "in", tmp_path / "ok", embedding_column="emb", dtype="float32",
                       file_format=file_format, progress=False)
    got = np.concatenate([b for _, b in EmbeddingStore.open(tmp_path / "ok").batches(0, 64)])
    assert rep.written == 1 and got[17, 1] == np.float32(7e4)


@pytest.mark.parametrize("out", [".", ".."])
def test_the_current_folder_or_a_parent_is_never_the_output(tmp_path, monkeypatch, out):
    x = planted(n=10, d=3, dups=0)[0]
    write_shards(tmp_path / "in", x, [10])
    here = tmp_path / "a" / "here"
    here.mkdir(parents=True)
    for folder in (here, here.parent):  # both look like prunekit's output: --overwrite would have replaced them
        (folder / "prunekit.json").write_text('{"prunekit_version": "0"}')
    monkeypatch.chdir(here)
    with pytest.raises(ValueError, match="is the current folder or holds it"):
        embed_shards(tmp_path / "in", out, embedding_column="emb", overwrite=True, progress=False)
    assert _files(here) == ["prunekit.json"] and _files(here.parent) == ["here", "prunekit.json"]


def _text_shard(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", r"has no column 'emb'; it has \['text'\]"),
    ("width", "embeddings are 4-dimensional but earlier shards' are 3"),
    ("ragged", "has 2 values but row 0 has 3"),
    ("nan", "1 embeddings hold NaN or infinite values"),
    ("notext", "holds int64, not text"),
    ("nulls", "1 null texts"),
])
def test_bad_shards_are_refused_before_anything_is_written(tmp_path, case, message):
    good = planted(n=10, d=3, dups=0)[0]
    a = _text_shard(tmp_path / "a.parquet", text=["x"] * 10,
                    emb=pa.FixedSizeListArray.from_arrays(pa.array(good.reshape(-1)), 3))
    kwargs = {"embedding_column": "emb"}
    if case == "missing":
        b = _text_shard(tmp_path / "b.parquet", text=["y"])
    elif case == "width":
        b = _text_shard(tmp_path / "b.parquet", emb=pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 8), 4))
    elif case == "ragged":
        b = _text_shard(tmp_path / "b.parquet", emb=pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]]))
    elif case == "nan":
        b = _text_shard(tmp_path / "b.parquet", emb=pa.array([[1.0, 2.0, 3.0], [1.0, float("nan"), 3.0]]))
    elif case == "notext":
        b, kwargs = _text_shard(tmp_path / "b.parquet", text=[1, 2]), {}
    else:
        b, kwargs = _text_shard(tmp_path / "b.parquet", text=["z", None]), {}
    with pytest.raises(ValueError, match=message):
        embed_shards([a, b], tmp_path / "emb", model=lambda t: np.ones((len(t), 2)), progress=False, **kwargs)
    assert not (tmp_path / "emb").exists()
    assert _files(tmp_path) == ["a.parquet", "b.parquet"]


def test_an_output_folder_is_reused_replaced_or_refused(tmp_path):
    x = planted(n=50, d=3, dups=0)[0]
    write_shards(tmp_path / "in", x, [50])
    write_shards(tmp_path / "in2", x[:20], [20])
    embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", progress=False)
    with pytest.raises(ValueError, match="holds embeddings of other inputs or settings; pass --overwrite"):
        embed_shards(tmp_path / "in2", tmp_path / "emb", embedding_column="emb", progress=False)
    rep = embed_shards(tmp_path / "in2", tmp_path / "emb", embedding_column="emb", overwrite=True, progress=False)
    assert rep.n == 20 and EmbeddingStore.open(tmp_path / "emb").n == 20
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files prunekit did not write"):
        embed_shards(tmp_path / "in", tmp_path / "mine", embedding_column="emb", overwrite=True, progress=False)
    assert _files(tmp_path / "mine") == ["notes.txt"]


def test_an_incomplete_folder_is_refused_with_what_to_do(tmp_path):
    x = planted(n=50, d=3, dups=0)[0]
    write_shards(tmp_path / "in", x, [25, 25])
    embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", progress=False)
    (tmp_path / "emb/part-00001.npy").unlink()
    with pytest.raises(ValueError, match="incomplete: 1 of 2 shards are written. Run the same `prunekit data embed`"):
        dedup(tmp_path / "emb", n_clusters=2, eps=0.1)
    with pytest.raises(ValueError, match="not an embedding folder prunekit wrote"):
        dedup(tmp_path / "in", n_clusters=2, eps=0.1)
