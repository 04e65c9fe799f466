"""The per-tensor arithmetic of the merge methods, against hand-computed values and the papers' formulas."""

import pytest
import torch

from prunekit.merge import merge_config, merge_state_dicts, merge_tensor, tensor_generator
from prunekit.merge.sparsify import dare, della, elect_and_merge
from prunekit.merge.tensors import CHUNK, MagnitudeHistogram, MergeCounts, Trim, merge_tensor_groups, row_groups

from tests.tolerances import tol


def test_generator_depends_on_seed_model_and_name_only():
    a = torch.rand(5, generator=tensor_generator(0, 0, "w"))
    assert torch.equal(a, torch.rand(5, generator=tensor_generator(0, 0, "w")))
    assert not torch.equal(a, torch.rand(5, generator=tensor_generator(1, 0, "w")))
    assert not torch.equal(a, torch.rand(5, generator=tensor_generator(0, 1, "w")))
    assert not torch.equal(a, torch.rand(5, generator=tensor_generator(0, 0, "v")))


def test_dare_keeps_density_and_rescales_exactly():
    delta = torch.randn(200, 500)
    out = dare(delta, 0.1, tensor_generator(0, 0, "x"))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005  # binomial sd ≈ 0.0007
    assert torch.allclose(out[kept], delta[kept] / 0.1)  # 1/(1-p) with p = 0.9
    # unbiased: the mean over many seeds approaches the delta
    mean = sum(dare(delta[:4, :50], 0.5, tensor_generator(s, 0, "y")) for s in range(400)) / 400
    assert (mean - delta[:4, :50]).abs().mean() < 0.05


def test_dare_l1_rescale_matches_norm():
    delta = torch.randn(50, 40)
    out = dare(delta, 0.3, tensor_generator(0, 0, "x"), rescale="l1")
    # two float32 sums of |values| (2,000 and about 600 terms) in different orders
    assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=tol(torch.float32, k=2000)["rtol"])


def test_trim_keeps_exactly_k_with_ties_by_position():
    delta = torch.tensor([0.1, -0.5, 0.3, -0.2, 0.05])
    t = merge_config("magnitude", density=0.4, trim_scope="tensor")
    assert merge_tensor("w", torch.zeros(5), [delta], t).tolist() == pytest.approx([0, -0.5, 0.3, 0, 0])
    ties = merge_tensor("w", torch.zeros(4), [torch.tensor([1.0, 2.0, 1.0, 1.0])], t.replace(density=0.5))
    assert ties.tolist() == [1.0, 2.0, 0.0, 0.0]  # of the tied 1s, the first in row-major order
    state = [0]
    trim = Trim(1.0, ties=2)  # across row groups, the budget of ties carries over
    assert trim.apply(torch.tensor([1.0, 3.0]), state).tolist() == [1.0, 3.0]
    assert trim.apply(torch.tensor([1.0, 1.0]), state).tolist() == [1.0, 0.0]


def test_row_groups_depend_on_shape_only():
    assert row_groups((7,)) == [(0, 7)] and row_groups(()) == [(0, 1)]
    groups = row_groups((5000, 1000))
    assert groups[0] == (0, CHUNK // 1000) and groups[-1][1] == 5000
    assert row_groups((3, 2 * CHUNK)) == [(0, 1), (1, 2), (2, 3)]


def test_big_tensor_merge_in_row_groups(monkeypatch):
    import prunekit.merge.tensors as tensors

    monkeypatch.setattr(tensors, "CHUNK", 1 << 14)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(300, 140, generator=gen)  # 3 row groups of 117 rows
    fts = [base + 1e-3 * torch.randn(300, 140, generator=gen) for _ in range(2)]
    for method, extra in (("ties", dict(trim_scope="tensor")), ("dare_ties", {}), ("della", {}),
                          ("dare_linear", dict(semantics="mergekit"))):
        cfg = merge_config(method, density=0.2, **extra)
        out = merge_tensor("w", base, fts, cfg)
        kept = ((out - base).abs() > 0).float().mean().item()
        assert 0.15 < kept < 0.45, (method, kept)  # two models' survivors, overlapping
        counts = MergeCounts()
        rows = lambda t: (lambda r0, r1: t[r0:r1])  # noqa: E731
        list(merge_tensor_groups("w", tuple(base.shape), base.dtype, rows(base), [rows(f) for f in fts], cfg,
                                 counts=counts))
        if method == "ties":  # exactly the top 20% of each delta survive the trim
            assert counts.after == [int(0.2 * base.numel())] * 2
        else:
            assert all(abs(a / base.numel() - 0.2) < 0.01 for a in counts.after)
    assert len(tensors.row_groups(base.shape)) == 3
    # mergekit's L1 rescale is over the whole tensor, not each row group
    one = merge_tensor("w", base, fts[:1], merge_config("dare_linear", density=0.3, semantics="mergekit"))
    assert (one - base).abs().sum().item() == pytest.approx(  # 42,000-term float32 sums in two orders
        (fts[0] - base).abs().sum().item(), rel=tol(torch.float32, k=300 * 140)["rtol"])


def test_histogram_threshold_is_exact_global_kth_value():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=gen) * s for n, s in ((1000, 1e-3), (5000, 1e-2), (300, 1.0))]
    h = MagnitudeHistogram()
    for t in tensors:
        h.add(t)
    h.boundary(0.1)
    for t in tensors:
        h.add_boundary(t)
    thr = h.threshold()
    allv = torch.cat(tensors).abs()
    k = round(0.1 * allv.numel())
    assert thr == torch.sort(allv, descending=True).values[k - 1].item()
    assert int((allv >= thr).sum()) == k
    assert h.median() == pytest.approx(allv.median().item(), rel=0.01)


def test_della_ranks_by_magnitude_and_rescales_by_own_probability():
    delta = torch.linspace(0.01, 1.0, 1000).repeat(400, 1)  # every row: magnitudes increasing along it
    out = della(delta, 0.2, 0.6, tensor_generator(0, 0, "d"))
    kept = (out != 0).float().mean(0)
    assert kept[:100].mean() == pytest.approx(0.22, abs=0.03)  # smallest: near keep_lo
    assert kept[-100:].mean() == pytest.approx(0.58, abs=0.03)  # largest: near keep_hi
    assert kept.mean() == pytest.approx(0.4, abs=0.01)
    p = 0.2 + 0.4 * torch.arange(1000) / 999
    mask = out != 0
    assert torch.allclose(out[mask], (delta / p)[mask], rtol=1e-5)


def test_ties_election_paper_vs_mergekit():
    d0 = torch.tensor([1.0, -2.0, 3.0, 0.0])
    d1 = torch.tensor([-1.0, -1.0, 1.0, 2.0])
    paper = elect_and_merge([d0, d1], [1.0, 1.0], weighted_election=False, mean=True)
    assert paper.tolist() == [0.0, -1.5, 2.0, 2.0]  # sign(0) = 0: nobody agrees with entry 0
    mk = elect_and_merge([d0, d1], [1.0, 1.0], weighted_election=True, mean=True)
    assert mk.tolist() == [1.0, -1.5, 2.0, 2.0]  # mergekit: a tie goes to +
    # mergekit #474: weights change the election there, not in the paper
    a, b = torch.tensor([1.0]), torch.tensor([-0.8])
    assert elect_and_merge([a, b], [0.2, 1.0], weighted_election=False, mean=True).tolist() == [1.0]
    assert elect_and_merge([a, b], [0.2, 1.0], weighted_election=True, mean=True).tolist() == pytest.approx([-0.8])
    assert elect_and_merge([a, b], [0.2, 1.0], weighted_election=True, mean=False).tolist() == pytest.approx([-0.8])


def test_merge_tensor_methods_on_known_values():
    base = torch.zeros(4)
    m0 = torch.tensor([1.0, -2.0, 3.0, 0.0])
    m1 = torch.tensor([-1.0, -1.0, 1.0, 2.0])
    cfg = merge_config("ties", density=1.0)
    assert merge_tensor("w", base, [m0, m1], cfg).tolist() == [0.0, -1.5, 2.0, 2.0]
    assert merge_tensor("w", base, [m0, m1], merge_config("linear")).tolist() == [0.0, -1.5, 2.0, 1.0]
    ta = merge_config("task_arithmetic", scale=0.5)
    assert merge_tensor("w", base, [m0, m1], ta).tolist() == [0.0, -1.5, 2.0, 1.0]
    # TIES at density 0.5, tensor scope: m0 keeps 3, -2; m1 keeps 2 and (first of the tied 1s) -1
    t = merge_config("ties", density=0.5, trim_scope="tensor")
    assert merge_tensor("w", base, [m0, m1], t).tolist() == [-1.0, -2.0, 3.0, 2.0]
    # integer tensors and skipped names are copied from the base
    ints = torch.tensor([1, 2])
    assert merge_tensor("ids", ints, [ints + 1], cfg).tolist() == [1, 2]
    skip = merge_config("ties", density=1.0, skip=["*.bias"])
    assert merge_tensor("a.bias", base, [m0, m1], skip).tolist() == [0.0] * 4


def test_state_dict_merge_is_independent_of_tensor_order_and_subset():
    gen = torch.Generator().manual_seed(1)
    base = {n: torch.randn(8, 8, generator=gen) for n in "abc"}
    fts = [{n: t + 0.01 * torch.randn(8, 8, generator=gen) for n, t in base.items()} for _ in range(2)]
    full = merge_state_dicts(base, fts, "dare_ties", density=0.3, seed=7)
    rev = merge_state_dicts(dict(reversed(list(base.items()))), [dict(reversed(list(f.items()))) for f in fts],
                            "dare_ties", density=0.3, seed=7)
    only_b = merge_state_dicts({"b": base["b"]}, [{"b": f["b"]} for f in fts], "dare_ties", density=0.3, seed=7)
    assert all(torch.equal(full[n], rev[n]) for n in base)
    assert torch.equal(full["b"], only_b["b"])
    other = merge_state_dicts(base, fts, "dare_ties", density=0.3, seed=8)
    assert not torch.equal(full["a"], other["a"])


def test_model_scope_trim_ranks_across_tensors():
    base = {"small": torch.zeros(100), "big": torch.zeros(100)}
    ft = {"small": torch.full((100,), 0.001), "big": torch.linspace(0.1, 1.0, 100)}
    model = merge_state_dicts(base, [ft], "magnitude", density=0.5)  # paper: the whole model's top half
    tensor = merge_state_dicts(base, [ft], "magnitude", density=0.5, trim_scope="tensor")
    assert int((model["small"] != 0).sum()) == 0 and int((model["big"] != 0).sum()) == 100
    assert int((tensor["small"] != 0).sum()) == 50 and int((tensor["big"] != 0).sum()) == 50
    mk = merge_state_dicts(base, [ft], "magnitude", density=0.5, semantics="mergekit")
    assert int((mk["small"] != 0).sum()) == 50  # mergekit ranks tensor by tensor


def test_mergekit_dare_ties_sums_where_paper_averages():
    base = {"w": torch.zeros(1000)}
    fts = [{"w": torch.full((1000,), 0.01)}, {"w": torch.full((1000,), 0.01)}]
    paper = merge_state_dicts(base, fts, "dare_ties", density=1.0)["w"]
    mk = merge_state_dicts(base, fts, "dare_ties", density=1.0, semantics="mergekit")["w"]
    assert torch.allclose(paper, torch.full((1000,), 0.01))
    assert torch.allclose(mk, torch.full((1000,), 0.02))


def test_weights_must_match_models():
    with pytest.raises(ValueError, match="one weight per model"):
        merge_state_dicts({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], "linear", weights=[1.0, 2.0])
