import pytest
import torch

import prunekit as pk
from prunekit.core.pattern import Pattern, pattern_holds
from prunekit.methods.sparsegpt import choose_in_group_, inverse_hessian_factor, sparsegpt_prune
from prunekit.models.hf import tiny_model

from tests.tolerances import rows_that_agree


def _problem(rows=16, cols=256, tokens=600):
    x = torch.randn(tokens, cols) * torch.linspace(0.2, 3.0, cols)  # uneven input scales
    x[:, :8] += 2 * torch.randn(tokens, 1)  # correlated columns, which OBS can exploit
    w = torch.randn(rows, cols)
    return w, x


def _error(w, new_w, x):
    return float(((x @ w.t() - x @ new_w.t()) ** 2).sum())


def _paper_loop(w, hinv, sparsity, n=0, m=0, blocksize=128):
    """The column loop of the paper's code (sparsegpt.py, fasterprune), written out plainly."""
    w = w.clone()
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, q1, err1 = w[:, i1:i2].clone(), torch.zeros(rows, i2 - i1), torch.zeros(rows, i2 - i1)
        h1 = hinv[i1:i2, i1:i2]
        if m:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            tmp = w1 ** 2 / torch.diag(h1).reshape(1, -1) ** 2
            order = torch.argsort(tmp.reshape(-1), stable=True)[: int(round(tmp.numel() * sparsity))]
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[order] = True
            mask1 = mask1.reshape(tmp.shape)
        for i in range(i2 - i1):
            col, dd = w1[:, i], h1[i, i]
            if m and i % m == 0:
                tmp = w1[:, i:i + m] ** 2 / torch.diag(h1)[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.argsort(tmp, dim=1, stable=True)[:, : m - n], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / dd
            w1[:, i:] -= e.unsqueeze(1).matmul(h1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w, ~mask


@pytest.mark.parametrize("sparsity, n, m, blocksize", [(0.5, 0, 0, 128), (0.3, 0, 0, 48), (0.0, 2, 4, 128),
                                                       (0.0, 1, 4, 64)])
def test_matches_the_papers_column_loop(sparsity, n, m, blocksize):
    w, x = _problem(rows=24, cols=192)
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    new_w, keep = sparsegpt_prune(w, hinv, dead, sparsity, n, m, blocksize)
    ref_w, ref_keep = _paper_loop(w, hinv, sparsity, n, m, blocksize)
    # the lazy block updates are matrix products (192-term sums) in another order than the paper's loop, so
    # two near-equal scores may swap; rows are independent in OBS, so every row whose mask agrees must agree
    same = rows_that_agree(keep, ref_keep)
    torch.testing.assert_close(new_w[same], ref_w[same], rtol=1e-4, atol=1e-4)


def test_reconstruction_beats_masking_with_the_same_mask_and_magnitude():
    w, x = _problem()
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    new_w, keep = sparsegpt_prune(w, hinv, dead, 0.5, blocksize=128)
    assert float((~keep).float().mean()) == pytest.approx(0.5)
    assert torch.equal(new_w == 0, ~keep)
    masked = w * keep
    mag = w * pk.core.pattern.mask_from_scores(w.abs(), Pattern("row"), w.numel() // 2)
    assert _error(w, new_w, x) < 0.8 * _error(w, masked, x)
    assert _error(w, new_w, x) < 0.8 * _error(w, mag, x)


def test_each_block_of_columns_gets_its_share_and_two_four_holds():
    w, x = _problem()
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    _, keep = sparsegpt_prune(w, hinv, dead, 0.25, blocksize=64)
    for i in range(0, 256, 64):
        assert float((~keep[:, i:i + 64]).float().mean()) == pytest.approx(0.25)
    _, keep24 = sparsegpt_prune(w, hinv, dead, 0.0, n=2, m=4)
    assert pattern_holds(keep24, Pattern("nm", n=2, m=4))
    assert float((~keep24).float().mean()) == pytest.approx(0.5)


def test_dead_inputs_are_zeroed_and_dampening_keeps_h_invertible():
    w, x = _problem(cols=32)
    x[:, 3] = 0
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    assert dead.tolist().count(True) == 1 and bool(dead[3])
    new_w, _ = sparsegpt_prune(w, hinv, dead, 0.5)
    assert bool((new_w[:, 3] == 0).all()) and torch.isfinite(new_w).all()


def test_already_pruned_entries_stay_pruned():
    w, x = _problem(cols=64)
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    old = torch.rand(w.shape) > 0.3
    _, keep = sparsegpt_prune(w * old, hinv, dead, 0.5, keep=old)
    assert not bool((keep & ~old).any())


@pytest.mark.parametrize("family, pattern", [("llama", "unstructured"), ("gpt2", "2:4"), ("opt", "unstructured"),
                                             ("qwen2", "2:4")])
def test_whole_model_sparsity_pattern_and_weights_updated(family, pattern):
    model = tiny_model(family)
    dense = tiny_model(family)
    calib = torch.randint(0, 128, (8, 16))
    report = pk.prune_(model, "sparsegpt", 0.5 if pattern == "unstructured" else None, pattern=pattern,
                       calibration=calib, progress=False)
    assert report.sparsity == pytest.approx(0.5)
    name = next(iter(report.layers))
    kept = dict(model.named_modules())[name].weight.detach()
    before = dict(dense.named_modules())[name].weight.detach()
    assert not torch.allclose(kept[kept != 0], before[kept != 0])  # OBS moved the surviving weights
    if pattern == "2:4":
        for n in report.layers:
            mask = pk.get_mask(dict(model.named_modules())[n])
            assert pattern_holds(mask.t() if family == "gpt2" else mask, Pattern("nm", n=2, m=4))


def test_failure_restores_weights_and_masks(monkeypatch):
    from prunekit.methods import sparsegpt

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = sparsegpt.SparseGPT.prune_layer

    def failing(self, name, *args):
        calls.append(name)
        if len(calls) == 10:
            raise RuntimeError("boom")
        return original(self, name, *args)

    monkeypatch.setattr(sparsegpt.SparseGPT, "prune_layer", failing)
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=torch.randint(0, 128, (4, 16)), progress=False)
    assert list(pk.masked_modules(model)) == []
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_ctrl_c_part_way_restores_the_model_and_removes_the_journal(monkeypatch, tmp_path):
    import tempfile

    from prunekit.methods import sparsegpt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = sparsegpt.SparseGPT.prune_layer

    def interrupted(self, name, *args):
        calls.append(name)
        if len(calls) == 5:
            assert any(p.name.startswith("prunekit-journal-") for p in tmp_path.iterdir())
            raise KeyboardInterrupt
        return original(self, name, *args)

    monkeypatch.setattr(sparsegpt.SparseGPT, "prune_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pk.prune_(model, "sparsegpt", 0.5, calibration=torch.randint(0, 128, (4, 16)), progress=False)
    assert list(tmp_path.iterdir()) == [] and list(pk.masked_modules(model)) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_hessian_that_cannot_be_factored_is_a_clear_error(monkeypatch):
    from prunekit.methods import sparsegpt

    def broken(h, percdamp):
        raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be completed")

    monkeypatch.setattr(sparsegpt, "inverse_hessian_factor", broken)
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="not positive definite even with percdamp=0.01; raise percdamp"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=torch.randint(0, 128, (2, 8)), progress=False)
    assert list(pk.masked_modules(model)) == []


def test_options_are_checked_first():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="percdamp"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=torch.randint(0, 128, (2, 8)), percdamp=2.0, progress=False)
    with pytest.raises(ValueError, match="supports patterns"):
        pk.prune_(model, "sparsegpt", 0.5, pattern="row", calibration=torch.randint(0, 128, (2, 8)), progress=False)


def _indexed_column_loop(w, hinv, dead, sparsity, blocksize=128):
    """The column loop as it was written before its rows were taken as views once (round 4 of issue 26):
    every operand indexed per column."""
    from prunekit.core.pattern import Pattern, mask_from_scores

    w = w.float().contiguous().clone()
    w[:, dead] = 0
    rows, cols = w.shape
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1t = w[:, i1:i2].t().contiguous()
        err1t = torch.zeros_like(w1t)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1).reshape(-1, 1)
        score = w[:, i1:i2].square() / d.reshape(1, -1).square()
        k = int(round(score.numel() * sparsity))
        mask1t = (~mask_from_scores(score, Pattern("unstructured"), k)).t().contiguous()
        pruned_t = mask1t.float()
        for i in range(i2 - i1):
            torch.div(w1t[i] * pruned_t[i], hinv1[i, i], out=err1t[i])
            w1t[i:].addr_(hinv1[i, i:], err1t[i], alpha=-1)
        w[:, i1:i2] = w1t.masked_fill(mask1t, 0.0).t()
        pruned[:, i1:i2] = mask1t.t()
        w[:, i2:].addmm_(err1t.t(), hinv[i1:i2, i2:], alpha=-1)
    return w, ~pruned


def test_the_column_loop_on_row_views_does_the_same_arithmetic():
    w, x = _problem(rows=24, cols=300)
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    new_w, keep = sparsegpt_prune(w, hinv, dead, 0.5, blocksize=128)
    ref_w, ref_keep = _indexed_column_loop(w, hinv, dead, 0.5, blocksize=128)
    # the same float32 operations per column (a quotient, a rank-1 update); the lazy updates are products taken
    # transposed, per strip of 32 columns (rounds 9-10), summed in another grouping: float32 rounding
    same = rows_that_agree(keep, ref_keep)
    assert same.float().mean() >= 0.9
    torch.testing.assert_close(new_w[same], ref_w[same], rtol=1e-5, atol=1e-5)


def _untransposed_column_loop(w, hinv, dead, sparsity, n=0, m=0, blocksize=128, keep=None):
    """The column loop as round 8 of issue 26 wrote it: on the (out, in) weight, each block transposed and back."""
    from prunekit.core.pattern import Pattern, mask_from_scores

    unstructured = Pattern("unstructured")
    w = w.float().contiguous().clone()
    w[:, dead] = 0
    rows, cols = w.shape
    pruned = torch.zeros_like(w, dtype=torch.bool)
    prune_per_group = m - n if m else 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1t = w[:, i1:i2].t().contiguous()  # (count, rows): column i of the block is row i here
        err1t = torch.zeros_like(w1t)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1).reshape(-1, 1)
        keep1t = None if keep is None else keep[:, i1:i2].t()
        if m:
            mask1t = torch.zeros_like(w1t, dtype=torch.bool)  # True = pruned
        else:
            score = w[:, i1:i2].square() / d.reshape(1, -1).square()  # ranked in (out, in) order, as the paper
            if keep is not None:
                score = score.masked_fill(~keep[:, i1:i2], -1.0)
            k = int(round(score.numel() * sparsity))
            mask1t = (~mask_from_scores(score, unstructured, k)).t().contiguous()
        pruned_t = mask1t.float()
        # the rows of the block's tensors as views taken once (indexing them per column costs more than the
        # column's arithmetic on this size); the arithmetic is the same, operation for operation
        w_rows, p_rows, e_rows, h_rows = w1t.unbind(0), pruned_t.unbind(0), err1t.unbind(0), hinv1.unbind(0)
        diag = hinv1.diagonal().unbind(0)
        for i in range(count):
            if m and i % m == 0:  # the group's choice is the module's own (not what this reference checks)
                choose_in_group_(mask1t[i:i + m], w1t[i:i + m], d[i:i + m],
                                 None if keep1t is None else keep1t[i:i + m], prune_per_group)
                pruned_t[i:i + m] = mask1t[i:i + m].float()
            # e = (w − q) / [H⁻¹]_ii, q = w with the pruned entries zeroed
            e = torch.mul(w_rows[i], p_rows[i], out=e_rows[i]).div_(diag[i])
            w1t[i:].addr_(h_rows[i][i:], e, alpha=-1)
        w[:, i1:i2] = w1t.masked_fill(mask1t, 0.0).t()
        pruned[:, i1:i2] = mask1t.t()
        w[:, i2:].addmm_(err1t.t(), hinv[i1:i2, i2:], alpha=-1)
    return w, ~pruned


@pytest.mark.parametrize("sparsity, n, m, blocksize, with_keep", [(0.5, 0, 0, 128, False), (0.6, 0, 0, 32, True),
                                                                  (0.0, 2, 4, 128, False), (0.0, 1, 4, 64, True)])
def test_the_column_loop_on_the_transposed_weight_is_round_8s(sparsity, n, m, blocksize, with_keep):
    w, x = _problem(rows=40, cols=200)
    x[:, 7] = 0  # a dead input
    hinv, dead = inverse_hessian_factor(x.t() @ x, 0.01)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.3 if with_keep else None
    new_w, new_keep = sparsegpt_prune(w, hinv, dead, sparsity, n, m, blocksize, keep)
    ref_w, ref_keep = _untransposed_column_loop(w, hinv, dead, sparsity, n, m, blocksize, keep)
    assert bool(dead[7]) and new_w.is_contiguous() and new_keep.is_contiguous()
    # the column steps are the same operations; the lazy block updates are the same sums taken transposed and
    # grouped per strip of 32 columns (round 10): equal up to float32 rounding, so two near-equal scores
    # may swap; rows are independent in OBS, so every row whose mask agrees must agree
    same = rows_that_agree(new_keep, ref_keep)
    assert same.float().mean() >= 0.9
    torch.testing.assert_close(new_w[same], ref_w[same], rtol=1e-5, atol=1e-5)
    assert torch.equal(new_w[same] == 0, ref_w[same] == 0)


def test_energy_order_is_the_natural_loop_on_columns_sorted_by_input_energy():
    """column_order="energy" (GPTQ's act-order): the paper's loop on the columns sorted by diag(H), descending,
    each result put back in its own column — checked against _paper_loop on the hand-permuted problem."""
    torch.manual_seed(0)
    w, x = _problem(rows=12, cols=160)
    h = x.t() @ x
    order = torch.argsort(torch.diag(h), descending=True, stable=True)
    hinv, _ = inverse_hessian_factor(h[order][:, order], 0.01)
    ref_p, keep_p = _paper_loop(w[:, order], hinv, 0.5)
    ref, ref_keep = torch.empty_like(ref_p), torch.empty_like(keep_p)
    ref[:, order], ref_keep[:, order] = ref_p, keep_p

    from prunekit.methods.layerwise import Budget
    from prunekit.methods.sparsegpt import SparseGPT, SparseGPTConfig

    class Stats:  # what prune_matrix reads of the block's input statistics
        owner: dict = {}

        def gram(self, key):
            return h

        def seen(self, key):
            return True

    method = SparseGPT()
    method.begin_block()
    stats = Stats()
    plan = type("Plan", (), {"config": SparseGPTConfig(sparsity=0.5, column_order="energy", refit_iters=0),
                             "pattern": Pattern("unstructured")})()
    keep, new_w = method.prune_matrix("0", w, None, stats, Budget(sparsity=0.5), plan)
    same = rows_that_agree(keep, ref_keep)
    assert same.float().mean() > 0.9
    torch.testing.assert_close(new_w[same], ref[same], rtol=1e-4, atol=1e-4)
    assert float((~keep).float().mean()) == pytest.approx(0.5)


def test_energy_order_reconstructs_a_layer_with_uneven_inputs_at_least_as_well():
    # inputs whose energy falls from right to left: left to right visits the least important columns first
    torch.manual_seed(1)
    errors = {"natural": [], "energy": []}
    for trial in range(4):
        x = torch.randn(800, 192) * torch.linspace(3.0, 0.1, 192).flip(0)
        x[:, -16:] += 2 * torch.randn(800, 1)
        w = torch.randn(16, 192)
        h = x.t() @ x
        for name in errors:
            order = torch.arange(192) if name == "natural" else torch.argsort(torch.diag(h), descending=True)
            hinv, dead = inverse_hessian_factor(h[order][:, order], 0.01)
            new_p, _ = sparsegpt_prune(w[:, order], hinv, dead, 0.5)
            new_w = torch.empty_like(new_p)
            new_w[:, order] = new_p
            errors[name].append(_error(w, new_w, x))
    assert sum(errors["energy"]) < 0.97 * sum(errors["natural"])


def test_energy_order_is_refused_with_n_m():
    with pytest.raises(ValueError, match="column_order='energy' reorders the columns.*N:M"):
        pk.prune_(tiny_model("llama"), "sparsegpt", pattern="2:4", column_order="energy",
                  calibration=torch.randint(0, 128, (2, 8)), progress=False)


def test_the_inverse_hessian_factor_is_the_papers_and_leaves_its_input_alone():
    # from the reversed H's factor and a triangular inverse: the paper's chol(inv(H + λI))ᵀ up to float32 rounding
    # (the two routes round differently); H itself is not touched
    _, x = _problem(rows=4, cols=96)
    h = x.t() @ x
    h[:, 5] = 0
    h[5, :] = 0  # a dead input column
    before = h.clone()
    hinv, dead = inverse_hessian_factor(h, 0.01)
    ref = h.clone()
    ref[5, 5] = 1
    ref += 0.01 * torch.mean(torch.diag(ref)) * torch.eye(96)
    paper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(ref)), upper=True)  # float32
    exact = torch.linalg.cholesky(torch.linalg.inv(ref.double()), upper=True)
    assert torch.equal(h, before)
    assert dead.nonzero().flatten().tolist() == [5]
    # float32 rounding: the columns made correlated above are the last pivots of the reversed factorisation, where
    # it loses a few more digits than the paper's route (2e-5 against 2e-6 of the largest entry, on this H of
    # condition ~400); as an inverse, UᵀU·H − I, both are at the same float32 level
    err, paper_err = (float((u.double() - exact).abs().max() / exact.abs().max()) for u in (hinv, paper))
    assert err < 1e-4 and paper_err < 1e-5, (err, paper_err)
    resid, paper_resid = (float((u.double().t() @ u.double() @ ref.double() - torch.eye(96, dtype=torch.float64))
                                .abs().max()) for u in (hinv, paper))
    assert resid < 5e-5 and resid < 4 * paper_resid, (resid, paper_resid)
    torch.testing.assert_close(hinv.t() @ hinv, torch.linalg.inv(ref), rtol=1e-3, atol=1e-5)
    assert torch.equal(hinv, hinv.triu()) and bool((hinv.diagonal() > 0).all())  # upper, positive diagonal


@pytest.mark.parametrize("n", [1, 7, 128, 129, 300])  # one solve; below, at and above the base; uneven halves
def test_the_upper_triangular_inverse_by_halves_is_the_inverse(n):
    from prunekit.methods.sparsegpt import upper_triangular_inverse_

    g = torch.Generator().manual_seed(n)
    r = (torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5).triu_()
    r.diagonal().copy_(torch.rand(n, generator=g, dtype=torch.float64) + 1.0)
    want = torch.linalg.inv(r)
    got = upper_triangular_inverse_(r.clone())
    assert torch.count_nonzero(got.tril(-1)) == 0  # still upper triangular, exactly
    # float64, products of depth ~n: a few hundred eps at the inverse's scale
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()) * n)
