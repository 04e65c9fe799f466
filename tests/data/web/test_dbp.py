import numpy as np
import pytest

from prunekit.data import DBPConfig, dbp_budgets, dedup, density
from prunekit.data.web.dbp import inter_cluster_distance
from prunekit.data.web.store import normalize

from tests.tolerances import tol

from .conftest import assignment


def test_d_inter_is_the_mean_cosine_distance_to_the_nearest_other_centroids():
    rng = np.random.default_rng(0)
    c = normalize(rng.standard_normal((30, 8)).astype(np.float32))
    got = inter_cluster_distance(c, neighbors=5)
    s = c @ c.T
    np.fill_diagonal(s, -np.inf)
    want = np.array([np.mean(1 - np.sort(row)[::-1][:5]) for row in s])
    # 8-term float32 similarities (Σ|terms| ≤ 1) in another order, then a mean of 5 distances ≤ 2
    np.testing.assert_allclose(got, want, **tol(np.float32, k=8 + 5, scale=2))
    assert inter_cluster_distance(c[:1]).tolist() == [1.0]


def test_density_follows_the_paper_end_to_end(tmp_path, planted_emb):
    emb, x, _, _ = planted_emb
    work = tmp_path / "work"
    rep = density(emb, n_clusters=12, keep=0.3, temperature=0.05, work=work, keep_work=True, progress=False)
    centroids = np.load(work / "centroids.npy")
    xn = normalize(x)
    sims = xn @ centroids.T
    # the run's nearest centroids, the best up to rounding (see test_semdedup); the reference builds on them
    labels, to_centroid = assignment(work, len(x))
    np.testing.assert_allclose(sims[np.arange(len(x)), labels], sims.max(1), **tol(np.float32, k=24))
    sizes = np.bincount(labels, minlength=12)
    d_intra = np.array([np.mean(1 - to_centroid[labels == c].astype(np.float64)) for c in range(12)])
    # 24-dim float32 similarities of unit vectors, summed in another order by the library's blocks: 24·eps
    # absolute (a distance near 0 has no relative precision)
    np.testing.assert_allclose(rep.d_intra, d_intra, **tol(np.float32, k=24))
    np.testing.assert_allclose(rep.d_inter, inter_cluster_distance(centroids, 20), **tol(np.float32, k=24))
    want = dbp_budgets(d_intra * rep.d_inter, sizes, 600, temperature=0.05, min_keep=1)
    assert rep.budgets.tolist() == want.tolist() and rep.kept == len(rep.indices) == 600
    for c in range(12):  # "hard": each cluster keeps its members farthest from the centroid
        members = np.flatnonzero(labels == c)
        mine = np.intersect1d(rep.indices, members)
        assert len(mine) == want[c]
        if 0 < len(mine) < len(members):
            assert to_centroid[mine].max() <= to_centroid[np.setdiff1d(members, mine)].min()
    assert rep.budgets.std() > 0  # complexity changes the per-cluster rates


def test_random_within_clusters_keeps_the_same_budgets(planted_emb):
    emb = planted_emb[0]
    hard = density(emb, n_clusters=12, keep=0.3, progress=False)
    rand = density(emb, n_clusters=12, keep=0.3, prefer="random", progress=False)
    again = density(emb, n_clusters=12, keep=0.3, prefer="random", progress=False)
    other = density(emb, n_clusters=12, keep=0.3, prefer="random", seed=1, progress=False)
    assert hard.budgets.tolist() == rand.budgets.tolist()
    assert not np.array_equal(hard.indices, rand.indices) and np.array_equal(rand.indices, again.indices)
    assert not np.array_equal(rand.indices, other.indices)


def test_density_after_dedup_prunes_only_the_kept_subset(tmp_path, planted_emb):
    emb = planted_emb[0]
    dd = dedup(emb, n_clusters=8, eps=0.05, out=tmp_path / "dedup.npy", progress=False)
    rep = density(emb, n_clusters=8, keep=0.5, subset=tmp_path / "dedup.npy", progress=False)
    kept_dedup = np.load(tmp_path / "dedup.npy")
    assert rep.n == dd.kept and rep.kept == round(0.5 * dd.kept)
    assert set(rep.indices.tolist()) <= set(kept_dedup.tolist())


def test_a_config_and_keywords_are_the_same_call(planted_emb):
    emb = planted_emb[0]
    cfg = DBPConfig(n_clusters=6, keep=0.4, temperature=0.2, seed=2)
    a = density(emb, cfg, progress=False)
    b = density(emb, n_clusters=6, keep=0.4, temperature=0.2, seed=2, progress=False)
    c = density(emb, cfg.to_dict(), progress=False)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, c.indices)
    assert DBPConfig.from_yaml(cfg.to_yaml()) == cfg


def test_bad_settings_are_refused_before_any_work(tmp_path, planted_emb):
    emb = planted_emb[0]
    with pytest.raises(ValueError, match=r"keep must be a number in \(0, 1\]"):
        density(emb, n_clusters=6, keep=1.5)
    with pytest.raises(ValueError, match="min_keep=1 for each of 1000 clusters"):
        density(emb, n_clusters=1000, keep=0.1)
    with pytest.raises(ValueError, match="2000 examples cannot form 5000 clusters"):
        density(emb, n_clusters=5000, keep=0.5, out=tmp_path / "k.npy")
    with pytest.raises(ValueError, match="unknown option 'tempreature'"):
        density(emb, {"n_clusters": 6, "keep": 0.5, "tempreature": 0.1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "shards"]
