import numpy as np
import pytest

from prunekit.data import dedup
from prunekit.data.web.cluster import within_cluster_order
from prunekit.data.web.semdedup import max_similarity_to_earlier, semdedup_cluster
from prunekit.data.web.store import normalize

from tests.tolerances import tol

from .conftest import assignment


def paper_removed(x_sorted, eps):
    """SemDeDup's reference code (semdedup.py): full similarity matrix, zero diagonal, upper triangle,
    column maximum > 1 - eps."""
    s = x_sorted @ x_sorted.T
    np.fill_diagonal(s, 0.0)
    return np.triu(s, 1).max(axis=0) > 1 - eps


def test_the_rule_is_the_papers_column_max_of_the_upper_triangle():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x[150:] = x[:150] + 0.2 * rng.standard_normal((150, 8)).astype(np.float32)
    x = normalize(x)
    sim = rng.uniform(0.5, 0.9, size=300).astype(np.float32)
    for eps in (0.01, 0.05, 0.1, 0.3):
        kept, removed, dup_of, s = semdedup_cluster(x, sim, eps, "hard", (0, 0))
        order = np.argsort(sim, kind="stable")  # farthest from the centroid first
        want = order[paper_removed(x[order], eps)]
        assert sorted(removed.tolist()) == sorted(want.tolist())
        assert len(kept) + len(removed) == 300 and len(removed) > 0
        assert np.all(s > 1 - eps)
        np.testing.assert_allclose(s, np.sum(x[removed] * x[dup_of], axis=1), rtol=1e-5)


def test_in_a_chain_every_member_close_to_an_earlier_one_goes_as_in_the_papers_code():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    c = np.array([np.cos(0.6), np.sin(0.6), 0.0])  # cos(a, c) = 0.825: not a duplicate of a
    x = normalize(np.stack([a, b, c]).astype(np.float32))
    sim = np.array([0.1, 0.2, 0.3], dtype=np.float32)  # a is the farthest from the centroid: first
    kept, removed, dup_of, _ = semdedup_cluster(x, sim, eps=0.05, prefer="hard", rng_seed=(0, 0))
    assert kept.tolist() == [0] and sorted(removed.tolist()) == [1, 2]  # c goes because of b, itself removed
    assert dict(zip(removed.tolist(), dup_of.tolist())) == {1: 0, 2: 1}


def test_which_member_survives_follows_prefer():
    x = normalize(np.array([[1.0, 0.0], [1.0, 0.001]], dtype=np.float32))
    sim = np.array([0.9, 0.2], dtype=np.float32)  # row 1 is farther from the centroid
    assert semdedup_cluster(x, sim, 0.05, "hard", (0, 0))[0].tolist() == [1]
    assert semdedup_cluster(x, sim, 0.05, "easy", (0, 0))[0].tolist() == [0]
    orders = {tuple(within_cluster_order(np.zeros(5, np.float32), "random", (s, 3))) for s in range(6)}
    assert len(orders) > 1  # random order depends on the seed ...
    assert within_cluster_order(np.zeros(5), "random", (2, 3)).tolist() == \
        within_cluster_order(np.zeros(5), "random", (2, 3)).tolist()  # ... and only on it


def test_blocked_similarities_match_the_full_matrix():
    x = normalize(np.random.default_rng(0).standard_normal((257, 16)).astype(np.float32))
    full_best, full_which = max_similarity_to_earlier(x, block_elements=1 << 30)
    # Each similarity is a 16-term float32 dot product of unit vectors (Σ|terms| ≤ 1); a blocking (or
    # another CPU's BLAS kernel) sums it in another order, so results agree to 16·eps, not bit for bit.
    close = tol(np.float32, k=16)
    s = x @ x.T
    rows = np.arange(1, 257)
    for block in (257, 1000, 257 * 7):
        best, which = max_similarity_to_earlier(x, block_elements=block)
        np.testing.assert_allclose(best[1:], full_best[1:], **close)
        assert best[0] == -np.inf and which[0] == -1
        assert np.all(which[1:] < rows)  # an earlier row
        # the chosen row is the most similar earlier one: the same as the full matrix's, or a tie within rounding
        np.testing.assert_allclose(s[rows, which[1:]], [s[j, :j].max() for j in rows], **close)
        np.testing.assert_allclose(s[rows, which[1:]], s[rows, full_which[1:]], **close)


def test_dedup_removes_the_planted_copies_and_nothing_else(planted_emb):
    emb, x, copies, originals = planted_emb
    report = dedup(emb, n_clusters=8, eps=0.05, progress=False)
    kept = set(report.indices.tolist())
    both = [(int(c) in kept) + (int(o) in kept) for c, o in zip(copies, originals)]
    assert both.count(1) >= 0.9 * len(copies) and both.count(0) == 0  # one of each pair; pairs split by k-means stay
    untouched = np.setdiff1d(np.arange(len(x)), np.concatenate([copies, originals]))
    assert set(untouched.tolist()) <= kept
    assert report.removed == len(x) - len(kept) == int(report.cluster_removed.sum())
    assert report.cluster_sizes.sum() == len(x) and report.n == 2000


def test_dedup_matches_an_in_memory_reference_with_the_same_centroids(tmp_path, planted_emb):
    emb, x, _, _ = planted_emb
    work = tmp_path / "work"
    report = dedup(emb, n_clusters=8, eps=0.08, seed=3, work=work, keep_work=True, progress=False)
    centroids = np.load(work / "centroids.npy")
    xn = normalize(x)
    sims = xn @ centroids.T
    # The run's nearest centroids: the best up to rounding (24-term float32 sums in another order), and the
    # reference below builds on them, so a near-tie (two centroids within rounding) cannot split the two.
    labels, to_centroid = assignment(work, len(x))
    close = tol(np.float32, k=24)
    np.testing.assert_allclose(to_centroid, sims.max(1), **close)
    np.testing.assert_allclose(sims[np.arange(len(x)), labels], sims.max(1), **close)
    kept = []
    for c in range(8):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(to_centroid[members], kind="stable")]
        kept += order[~paper_removed(xn[order], 0.08)].tolist()
    assert report.indices.tolist() == sorted(kept)
    lost = [int((labels == c).sum()) - int(np.isin(kept, np.flatnonzero(labels == c)).sum()) for c in range(8)]
    assert report.cluster_removed.tolist() == lost


def test_results_do_not_depend_on_shards_or_partitions(tmp_path, planted_emb):
    emb, x, _, _ = planted_emb
    base = dedup(emb, n_clusters=8, eps=0.05, progress=False).indices
    many = dedup(emb, n_clusters=8, eps=0.05, partition_rows=150, batch_size=97, progress=False).indices
    one = dedup(x, n_clusters=8, eps=0.05, progress=False).indices  # one in-memory shard
    assert np.array_equal(base, many) and np.array_equal(base, one)


def test_pairs_out_lists_each_removed_example_with_the_one_it_duplicates(tmp_path, planted_emb):
    import pyarrow.parquet as pq

    emb, x, copies, originals = planted_emb
    report = dedup(emb, n_clusters=8, eps=0.05, out=tmp_path / "keep.parquet", pairs_out=tmp_path / "pairs.parquet",
                   progress=False)
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pydict()
    assert len(pairs["removed"]) == report.removed
    truth = {**dict(zip(copies.tolist(), originals.tolist())), **dict(zip(originals.tolist(), copies.tolist()))}
    assert all(truth.get(r) == d for r, d in zip(pairs["removed"], pairs["duplicate_of"]))
    assert min(pairs["similarity"]) > 0.95
    assert report.indices is None and report.out == str(tmp_path / "keep.parquet")


@pytest.mark.parametrize("eps", [0, 1, -0.5, 1.5, float("nan")])
def test_eps_outside_the_open_unit_interval_is_refused_before_anything_is_written(tmp_path, eps):
    np.save(tmp_path / "emb.npy", np.eye(20, dtype=np.float32))
    with pytest.raises(ValueError, match=r"eps must be a number in \(0, 1\)"):
        dedup(tmp_path / "emb.npy", n_clusters=8, eps=eps, out=tmp_path / "keep.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]
