import pytest
import torch

import prunekit as pk
from prunekit.methods.refit import refit_rows
from prunekit.methods.sparsegpt import dampened_hessian, inverse_hessian_factor, sparsegpt_prune
from prunekit.models.hf import tiny_model


def _problem(rows=12, cols=48, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    x += torch.randn(tokens, cols, generator=g)
    return torch.randn(rows, cols, generator=g), x.t() @ x


def _err(w0, w, h):
    return float(torch.einsum("ri,ij,rj->", w0 - w, h, w0 - w))


def _exact(w0, keep, h):
    """Each row's least squares on its own support, solved directly in float64."""
    out = torch.zeros_like(w0)
    for r in range(w0.shape[0]):
        s = keep[r]
        out[r, s] = torch.linalg.solve(h[s][:, s].double(), (h[s] @ w0[r]).double()).float()
    return out


def test_refit_converges_to_each_rows_least_squares_on_its_support():
    w0, h = _problem()
    hd, dead = dampened_hessian(h, 0.01)
    hinv, _ = inverse_hessian_factor(h, 0.01)
    w1, keep = sparsegpt_prune(w0, hinv, dead, 0.5, blocksize=16)
    exact = _exact(w0, keep, hd)
    refit = refit_rows(w0, w1, keep, hd, iters=60)
    # the exact fit is the minimum on the mask: SparseGPT's greedy weights sit above it, the refit reaches it
    assert _err(w0, exact, hd) < 0.95 * _err(w0, w1, hd)
    assert _err(w0, refit, hd) == pytest.approx(_err(w0, exact, hd), rel=1e-4)
    assert torch.allclose(refit, exact, atol=1e-3 * float(exact.abs().max()))
    assert not refit[~keep].any()  # the mask is untouched


def test_each_refit_step_lowers_the_error_and_zero_steps_change_nothing():
    w0, h = _problem(seed=1)
    hd, dead = dampened_hessian(h, 0.01)
    w1, keep = sparsegpt_prune(w0, inverse_hessian_factor(h, 0.01)[0], dead, 0.5, blocksize=16)
    errors = [_err(w0, refit_rows(w0, w1, keep, hd, iters=k), hd) for k in (0, 1, 2, 4)]
    assert errors[0] == _err(w0, w1, hd)
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_sparsegpt_with_refit_keeps_its_masks_and_lowers_the_block_outputs_error():
    torch.manual_seed(0)
    base = tiny_model("llama").eval()
    ids = torch.randint(0, base.config.vocab_size, (8, 32))
    outs = {}
    for iters in (0, 8):
        model = tiny_model("llama").eval()
        model.load_state_dict(base.state_dict())
        pk.prune_(model, "sparsegpt", 0.5, calibration=ids, refit_iters=iters, progress=False)
        masks = {n: pk.get_mask(m).clone() for n, m in pk.masked_modules(model)}
        with torch.no_grad():
            outs[iters] = (masks, model(ids).logits)
    with torch.no_grad():
        dense = base(ids).logits
    assert outs[0][0].keys() == outs[8][0].keys()
    # sequential pruning: later layers' masks depend on the earlier refit weights, so the first layer's must agree
    first = next(iter(outs[0][0]))
    assert torch.equal(outs[0][0][first], outs[8][0][first])
    err = {k: float((v[1] - dense).square().mean()) for k, v in outs.items()}
    assert err[8] < err[0]


def test_refit_iters_must_not_be_negative():
    with pytest.raises(ValueError, match="refit_iters"):
        pk.methods.sparsegpt.SparseGPTConfig(refit_iters=-1)


def test_refit_dampens_h_as_sparsegpt_does_and_ignores_dead_inputs():
    w0, h = _problem(seed=2)
    h[5, :] = 0
    h[:, 5] = 0  # input 5 never active
    hd, dead = dampened_hessian(h, 0.01)
    w1, keep = sparsegpt_prune(w0, inverse_hessian_factor(h, 0.01)[0], dead, 0.5, blocksize=16)
    keep[:, 5] = True  # even where kept, a dead input's weight has nothing to fit
    ours = refit_rows(w0, w1 * keep, keep, h, iters=40, percdamp=0.01)
    w0_live = w0.clone()
    w0_live[:, 5] = 0
    exact = _exact(w0_live, keep, hd)
    assert torch.allclose(ours, exact, atol=1e-3 * float(exact.abs().max()))
    assert not ours[:, 5].any()


def test_refit_in_row_pieces_is_the_refit_of_all_rows(monkeypatch):
    import prunekit.methods.refit as refit

    w0, h = _problem(rows=20, seed=3)
    hd, dead = dampened_hessian(h, 0.01)
    w1, keep = sparsegpt_prune(w0, inverse_hessian_factor(h, 0.01)[0], dead, 0.5, blocksize=16)
    whole = refit_rows(w0, w1, keep, h, iters=3, percdamp=0.01)
    monkeypatch.setattr(refit, "REFIT_CHUNK_BYTES", 4 * 48 * 7)  # 7 rows at a time: pieces of 7, 7 and 6
    pieces = refit.refit_rows(w0, w1, keep, h, iters=3, percdamp=0.01)
    assert torch.allclose(pieces, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))
