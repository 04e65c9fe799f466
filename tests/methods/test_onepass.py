import copy

import pytest
import torch

import prunekit as pk
from prunekit.calibrate import walk_blocks_
from prunekit.core.mask import get_mask
from prunekit.methods.base import METHODS
from prunekit.methods.layerwise import block_targets
from prunekit.methods.layerwise import Budget
from prunekit.methods.prune import plan_prune
from prunekit.models.hf import tiny_model

from tests.tolerances import rows_that_agree

IDS = torch.randint(0, 128, (12, 24), generator=torch.Generator().manual_seed(0))
GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


def _reference_true_sequential(model, sparsity, pattern="unstructured"):
    """The slow definition: for each group of a block in order, rerun the whole block (earlier groups
    already pruned) to collect that group's inputs, then prune it."""
    plan = plan_prune(model, "sparsegpt", sparsity, pattern=pattern, calibration=IDS, progress=False,
                      batch_size=len(IDS))
    impl = plan.method

    def visit(i, block_name, block, inputs):
        targets = block_targets(plan, block_name)
        for group in GROUPS:
            mine = [t for t in targets if t.name.rsplit(".", 1)[-1] in group]
            stats = impl.collect(block, mine, inputs, None)
            for t in mine:
                impl.prune_layer(t.name, t.module, stats, Budget(sparsity), plan)

    walk_blocks_(model, IDS, visit, progress=False, batch_size=len(IDS))


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.6), ("2:4", None)])
def test_one_pass_is_true_sequential_sparsegpt(pattern, sparsity):
    base = tiny_model("llama", hidden=64, layers=2)
    fast, slow = copy.deepcopy(base), copy.deepcopy(base)
    pk.prune_(fast, "sparsegpt", sparsity, pattern=pattern, calibration=IDS, sequential="layer", progress=False,
              batch_size=len(IDS))  # one block call over all windows, as the reference
    _reference_true_sequential(slow, 0.5 if sparsity is None else sparsity, pattern)
    for (name, a), (_, b) in zip(pk.masked_modules(fast), pk.masked_modules(slow)):
        # one-pass statistics sum the Gram matrix in another order than the reference: near-equal scores may swap
        same = rows_that_agree(get_mask(a), get_mask(b))
        assert torch.allclose(a.weight[same], b.weight[same], atol=1e-5), name
    # and it differs from the usual loop, where o/down see the dense block's activations
    usual = copy.deepcopy(base)
    pk.prune_(usual, "sparsegpt", sparsity, pattern=pattern, calibration=IDS, progress=False, sequential="block")
    assert not torch.allclose(usual.model.layers[1].mlp.down_proj.weight, fast.model.layers[1].mlp.down_proj.weight)


def test_one_pass_runs_each_block_once():
    calls = {"layer": 0, "block": 0}
    for seq in calls:
        m = tiny_model("llama", hidden=64, layers=3)
        counter = [0]
        for layer in m.model.layers:  # the MLP runs only when its block really computes
            layer.mlp.register_forward_hook(lambda *a: counter.__setitem__(0, counter[0] + 1))
        pk.prune_(m, "sparsegpt", 0.5, calibration=IDS, sequential=seq, batch_size=len(IDS), progress=False)
        calls[seq] = counter[0]
    # capturing block 0's inputs runs block 0 once (the output template); the last block needs no propagation
    assert calls["layer"] == 1 + 3 and calls["block"] == 1 + 2 * 3 - 1


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.6), ("2:4", None)])
def test_one_pass_in_batches_gives_the_one_call_result(pattern, sparsity):
    base = tiny_model("llama", hidden=64, layers=2)
    whole, batched = copy.deepcopy(base), copy.deepcopy(base)
    pk.prune_(whole, "sparsegpt", sparsity, pattern=pattern, calibration=IDS, progress=False, batch_size=len(IDS))
    pk.prune_(batched, "sparsegpt", sparsity, pattern=pattern, calibration=IDS, progress=False, batch_size=5)
    rel = []
    for (name, a), (_, b) in zip(pk.masked_modules(whole), pk.masked_modules(batched)):
        assert torch.mean((get_mask(a) == get_mask(b)).float()) > 0.98, name
        rel.append(float((a.weight - b.weight).detach().norm() / a.weight.detach().norm()))
    # the same computation but for the order of float sums (products over 5 + 5 + 2 windows instead of 12): the
    # first layers agree to float32 precision (~1e-7 relative); further on, a near-tie decided the other way at
    # a mask threshold changes the OBS updates of its row, so only most layers agree that closely
    assert max(rel[:4]) < 1e-5 and sorted(rel)[len(rel) // 2] < 1e-4 and max(rel) < 0.1


def test_one_pass_in_batches_runs_each_block_once_per_batch_and_never_on_all_windows():
    m = tiny_model("llama", hidden=64, layers=3)
    sizes = []
    for layer in m.model.layers:
        layer.mlp.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    pk.prune_(m, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=5, progress=False)
    # capturing block 0's inputs runs block 0 once on the first batch (the output template), then every block
    # runs once on each batch of 5, 5 and 2 windows: no block is run twice on a batch, none on all 12 windows
    assert sizes == [5] + [5, 5, 2] * 3


def test_unequal_windows_fall_back_and_bad_option_is_refused():
    m = tiny_model("llama", hidden=64, layers=2)
    windows = [IDS[0, :20], IDS[1], IDS[2, :16]]
    r = pk.prune_(m, "sparsegpt", 0.5, calibration=windows, sequential="layer", progress=False)
    assert r.sparsity == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sequential"):
        pk.prune_(tiny_model("llama"), "sparsegpt", 0.5, calibration=IDS, sequential="yes")
    assert "sparsegpt" in METHODS.names()


def test_symmetric_gram_is_exact():
    from prunekit.calibrate.stats import symmetric_gram

    x = torch.randn(300, 520, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(symmetric_gram(x), x.t() @ x, atol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_one_pass_on_other_families_and_failure_restores(family, monkeypatch):
    from prunekit.methods import sparsegpt

    model = tiny_model(family)
    r = pk.prune_(model, "sparsegpt", 0.5, calibration=IDS, sequential="layer", progress=False)
    assert r.sparsity == pytest.approx(0.5)
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = sparsegpt.SparseGPT.prune_layer

    def failing(self, name, *args):
        calls.append(name)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return original(self, name, *args)

    monkeypatch.setattr(sparsegpt.SparseGPT, "prune_layer", failing)
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=IDS, sequential="layer", progress=False)
    assert list(pk.masked_modules(model)) == []
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("method, pattern, sparsity", [("sparsegpt", "unstructured", 0.6), ("sparsegpt", "2:4", None),
                                                       ("alps", "unstructured", 0.6)])
def test_staged_passes_give_the_one_pass_result_within_a_memory_budget(method, pattern, sparsity):
    base = tiny_model("llama", hidden=64, layers=2)
    one, staged = copy.deepcopy(base), copy.deepcopy(base)
    extra = {"max_iter": 20} if method == "alps" else {}
    pk.prune_(one, method, sparsity, pattern=pattern, calibration=IDS, progress=False, **extra)
    with pytest.warns(UserWarning, match="staged passes of 4 windows"):
        pk.prune_(staged, method, sparsity, pattern=pattern, calibration=IDS, progress=False, batch_size=4,
                  one_pass_max_gb=1e-6, **extra)
    pairs = list(zip(pk.masked_modules(one), pk.masked_modules(staged)))
    if method == "alps":  # ADMM's penalty schedule turns float-level differences into other masks: compare
        pairs = pairs[:4]  # only the first layers, whose inputs are the same tensors up to summation order
    rel = []
    for (name, a), (_, b) in pairs:
        assert torch.mean((get_mask(a) == get_mask(b)).float()) > 0.99, name
        rel.append(float((a.weight - b.weight).detach().norm() / a.weight.detach().norm()))
    # the same computation up to the order of float sums: most layers agree to float precision (a tie at a
    # mask threshold decided the other way changes the OBS updates of its row and the blocks after it)
    assert sorted(rel)[len(rel) // 2] < 1e-4 and max(rel) < 0.1


def test_staged_passes_call_each_block_in_batches():
    m = tiny_model("llama", hidden=64, layers=2)
    sizes = []
    m.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    with pytest.warns(UserWarning, match="staged"):
        pk.prune_(m, "sparsegpt", 0.5, calibration=IDS, progress=False, batch_size=4, one_pass_max_gb=1e-6)
    assert max(sizes) == 4  # never the 12 windows at once


def test_one_pass_memory_estimate_scales_with_the_calibration():
    from prunekit.calibrate.onepass import one_pass_bytes

    model = tiny_model("llama", hidden=64, layers=2)
    a, b = one_pass_bytes(model, IDS[:4]), one_pass_bytes(model, IDS)
    assert b == 3 * a
    # per token: 4 × (4·intermediate + 6·hidden + (heads + 2·kv)·head_dim) bytes, plus the attention scores
    assert a == 4 * 4 * 24 * (4 * 128 + 6 * 64 + (4 + 2 * 2) * 16) + 8 * 4 * 4 * 24 * 24


def test_sequential_layer_is_the_default_and_block_is_the_papers_order():
    base = tiny_model("llama", hidden=64, layers=2)
    default, layer, block = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    r = pk.prune_(default, "sparsegpt", 0.6, calibration=IDS, progress=False)
    pk.prune_(layer, "sparsegpt", 0.6, calibration=IDS, progress=False, sequential="layer")
    pk.prune_(block, "sparsegpt", 0.6, calibration=IDS, progress=False, sequential="block")
    assert r.config["sequential"] == "layer"
    down = lambda m: m.model.layers[1].mlp.down_proj.weight  # noqa: E731
    assert torch.equal(down(default), down(layer)) and not torch.allclose(down(default), down(block))


def test_one_pass_hands_memory_freed_before_it_back_before_the_first_block_runs(monkeypatch):
    from prunekit.calibrate import onepass

    events = []
    monkeypatch.setattr(onepass, "release_freed_memory", lambda: events.append("trim") or True)
    m = tiny_model("llama", hidden=64, layers=2)
    for layer in m.model.layers:
        layer.register_forward_pre_hook(lambda *a: events.append("block"))
    pk.prune_(m, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=6, progress=False)
    # loading's freed buffers are trimmed before the walk's first block call (capture included), not after it
    assert events[0] == "trim" and events.count("trim") == 1 and "block" in events
