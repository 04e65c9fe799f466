"""The Ray engine: the same results as one process (a local 2-CPU Ray), and clear errors."""

import numpy as np
import pytest

from prunekit.data import dedup, density, embed_shards

from .conftest import planted, write_shards


def test_a_ray_address_that_does_not_answer_is_a_clear_error(tmp_path):
    np.save(tmp_path / "emb.npy", np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match=r"Ray address '127.0.0.1:9' does not answer .*ray start --head"):
        dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, engine="ray", address="127.0.0.1:9",
              out=tmp_path / "k.npy")
    with pytest.raises(ValueError, match="is not 'auto', 'host:port'"):
        dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, engine="ray", address="nowhere")
    with pytest.raises(ValueError, match="--address is for --engine ray"):
        dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, address="auto")
    with pytest.raises(ValueError, match="reads the embeddings from files"):
        dedup(np.eye(8, dtype=np.float32), n_clusters=2, eps=0.1, engine="ray")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_exactly_the_single_process_results(tmp_path, local_ray):
    x, _, _ = planted(n=3000, d=32, dups=300, noise=0.05)
    write_shards(tmp_path / "in", x, [800, 700, 0, 1500])
    one = embed_shards(tmp_path / "in", tmp_path / "emb", embedding_column="emb", progress=False)
    on_ray = embed_shards(tmp_path / "in", tmp_path / "emb-ray", embedding_column="emb", engine="ray",
                          progress=False)
    assert (one.n, on_ray.n, on_ray.engine) == (3000, 3000, "ray")
    for i in range(4):
        name = f"part-{i:05d}.npy"
        assert np.array_equal(np.load(tmp_path / "emb" / name), np.load(tmp_path / "emb-ray" / name))
    settings = {"n_clusters": 10, "sample": 2000, "partition_rows": 700, "seed": 5, "progress": False}
    a = dedup(tmp_path / "emb", eps=0.1, **settings)
    b = dedup(tmp_path / "emb", eps=0.1, engine="ray", **settings)
    assert a.removed > 200 and np.array_equal(a.indices, b.indices)
    assert a.cluster_removed.tolist() == b.cluster_removed.tolist() and b.engine == "ray"
    c = density(tmp_path / "emb", keep=0.3, subset=a.indices, **settings)
    d = density(tmp_path / "emb", keep=0.3, subset=a.indices, engine="ray", **settings)
    assert np.array_equal(c.indices, d.indices) and c.budgets.tolist() == d.budgets.tolist()


@pytest.mark.slow
def test_bad_data_on_a_ray_worker_comes_back_as_the_same_error(tmp_path, local_ray):
    x = planted(n=500, d=4, dups=0)[0]
    sampled = np.random.default_rng([0, 7]).choice(500, 10, replace=False)  # the rows k-means trains on
    bad = int(np.setdiff1d(np.arange(500), sampled)[123])  # found by a Ray worker, not while sampling
    x[bad] = np.nan
    np.save(tmp_path / "emb.npy", x)
    with pytest.raises(ValueError, match=rf"NaN or infinite values \(first at examples \[{bad}\]\)"):
        dedup(tmp_path / "emb.npy", n_clusters=2, eps=0.1, sample=10, engine="ray", out=tmp_path / "k.npy",
              progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]
