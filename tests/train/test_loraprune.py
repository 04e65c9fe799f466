"""LoRAPrune: the schedule and the LoRA-guided gradient by hand, the estimate against the true gradient, neuron
scores by hand, masks that silence the adapters, and the whole run on a tiny Llama (smaller, reloads, seeded);
bad input is refused before anything changes."""

import pytest
import torch
from torch import nn

from torch.nn.utils import parametrize

from prunekit.core.mask import get_mask, set_mask_
from prunekit.models.hf import tiny_model
from prunekit.train.loraprune import LoRAPruneConfig, _Layer, lora_gradient, loraprune_, scheduled_sparsity
from prunekit.train.recovery import LoRA


def _adapt(lin: nn.Linear, rank: int) -> LoRA:
    """A LoRA adapter on ``lin`` as add_lora_ puts one (sharing the weight's mask, if any)."""
    adapter = LoRA(tuple(lin.weight.shape), rank, get_mask(lin), generator=torch.Generator().manual_seed(0))
    parametrize.register_parametrization(lin, "weight", adapter)
    return adapter


def test_cubic_schedule_by_hand():
    # 100 steps, 10 % warm-up, 30 % cool-down: the ramp runs over steps 10 → 70
    assert scheduled_sparsity(10, 100, 0.5, 0.1, 0.3) == 0.0
    assert scheduled_sparsity(40, 100, 0.5, 0.1, 0.3) == pytest.approx(0.5 * (1 - 0.5 ** 3))  # u = 30 / 60
    assert scheduled_sparsity(25, 100, 0.5, 0.1, 0.3) == pytest.approx(0.5 * (1 - 0.75 ** 3))  # u = 15 / 60
    assert scheduled_sparsity(70, 100, 0.5, 0.1, 0.3) == 0.5 == scheduled_sparsity(100, 100, 0.5, 0.1, 0.3)


def test_lora_gradient_by_hand():
    adapter = LoRA((2, 2), 1, None)
    with torch.no_grad():
        adapter.A.copy_(torch.tensor([[1.0, 2.0]]))
        adapter.B.copy_(torch.tensor([[3.0], [0.0]]))
    adapter.A.grad = torch.tensor([[0.5, -1.0]])
    adapter.B.grad = torch.tensor([[1.0], [2.0]])
    # G_B·A = [[1, 2], [2, 4]]; B·G_A = [[1.5, -3], [0, 0]]; G_B·G_A = [[0.5, -1], [1, -2]]
    expected = torch.tensor([[1.0 + 1.5 - 0.5, 2.0 - 3.0 + 1.0], [2.0 - 1.0, 4.0 + 2.0]])
    assert torch.equal(lora_gradient(adapter), expected)


def test_estimate_is_the_true_gradient_seen_through_the_adapters():
    # W_eff = W + α·B·A, so ∂L/∂B = α·G·Aᵀ and ∂L/∂A = α·Bᵀ·G: the first-order part of the estimate is
    # α·(G·AᵀA + B·Bᵀ·G), the true gradient G projected onto the adapters' subspaces
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(6, 5, bias=False)
    adapter = _adapt(lin, 2)
    with torch.no_grad():
        adapter.B.copy_(torch.randn(5, 2, generator=gen))
    x = torch.randn(7, 6, generator=gen)
    w = lin.parametrizations.weight.original
    w.requires_grad_(True)
    (lin(x) ** 2).sum().backward()
    g, a, b = w.grad, adapter.A.detach(), adapter.B.detach()
    first_order = adapter.scale * (g @ a.t() @ a + b @ b.t() @ g)
    second_order = adapter.B.grad @ adapter.A.grad
    assert torch.allclose(lora_gradient(adapter), first_order - second_order, rtol=1e-5, atol=1e-5)


def test_neuron_scores_by_hand_and_masks_silence_the_adapter():
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 3.0], [2.0, 2.0]]))
    set_mask_(lin, torch.ones(3, 2, dtype=torch.bool))
    adapter = _adapt(lin, 1)
    rows = _Layer(lin, rows=True).unit_scores("magnitude", 3)  # B = 0: |W| summed per row = [2, 3, 4] / ‖·‖
    assert torch.allclose(rows, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64) / 29 ** 0.5)
    cols = _Layer(lin, rows=False).unit_scores("magnitude", 2)  # per column = [3, 6] / ‖·‖
    assert torch.allclose(cols, torch.tensor([3.0, 6.0], dtype=torch.float64) / 45 ** 0.5)
    with torch.no_grad():
        adapter.B.fill_(1.0)
    _Layer(lin, rows=True).mask_units_(torch.tensor([1]), 3)
    assert torch.count_nonzero(lin.weight[1]) == 0 and torch.count_nonzero(lin.weight[0]) == 2  # W and B·A both off


@pytest.fixture
def windows():
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))


def test_whole_run_is_smaller_reloads_and_is_seeded(windows, tmp_path):
    from transformers import AutoModelForCausalLM

    runs = []
    for _ in range(2):
        model = tiny_model("llama", seed=0)
        report = loraprune_(model, windows, sparsity=0.5, steps=12, prune_every=3, progress=False)
        runs.append((model, report))
    (model, report), (twin, _) = runs
    assert model.config.intermediate_size == 64 and report.widths == {"intermediate_size": (128, 64)}
    for layer in model.model.layers:
        mlp = layer.mlp
        assert mlp.gate_proj.weight.shape == (64, 64) and mlp.down_proj.weight.shape == (64, 64)
        assert type(mlp.gate_proj.weight) is nn.Parameter  # adapters merged, masks gone
    assert report.params_after == sum(p.numel() for p in model.parameters()) < report.params_before
    assert [t for _, t in report.events][-1] == 0.5 and report.steps == 12 and report.tokens == 12 * 4 * 32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(windows[:2]).logits, model.eval()(windows[:2]).logits, atol=1e-5)


def test_the_criteria_choose_differently(windows):
    kept = {}
    for criterion in ("lora", "gradient", "magnitude"):
        model = tiny_model("llama", seed=0)
        before = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
        loraprune_(model, windows, sparsity=0.5, steps=9, prune_every=3, criterion=criterion, lr=1e-9,
                   progress=False)
        after = model.model.layers[0].mlp.gate_proj.weight.detach()
        # lr ≈ 0: each kept row is still a row of the original weight; find which
        kept[criterion] = sorted(int(torch.cdist(r[None], before).argmin()) for r in after)
    assert len(kept["lora"]) == 64
    assert kept["gradient"] != kept["magnitude"]


@pytest.mark.parametrize("fields,match", [
    (dict(sparsity=1.0), "sparsity"), (dict(batch_size=64), "larger than"), (dict(criterion="hessian"), "criterion"),
    (dict(warmup=0.5, cooldown=0.6), None),
])
def test_bad_settings_are_refused_before_anything_changes(windows, fields, match):
    model = tiny_model("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if match is None:  # warm-up and cool-down overlap: the schedule jumps straight to the final sparsity
        loraprune_(model, windows, steps=6, progress=False, **fields)
        assert model.config.intermediate_size == 64
        return
    with pytest.raises(ValueError, match=match):
        loraprune_(model, windows, progress=False, **fields)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_moe_and_masked_models_are_refused(windows):
    moe = tiny_model("qwen2_moe", seed=0)
    with pytest.raises(ValueError, match="MoE experts"):
        loraprune_(moe, windows % moe.config.vocab_size, steps=2, progress=False)
    model = tiny_model("llama", seed=0)
    set_mask_(model.model.layers[0].mlp.up_proj, torch.ones(model.model.layers[0].mlp.up_proj.weight.shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        loraprune_(model, windows, steps=2, progress=False)
    with pytest.raises(ValueError, match="calibration"):
        loraprune_(tiny_model("llama", seed=0), None, progress=False)
    assert LoRAPruneConfig().criterion == "lora"


@pytest.mark.parametrize("family", ["qwen2", "phi3", "gpt2", "opt", "gpt_neox"])
def test_other_families_shrink_and_reload(family, tmp_path):
    # phi3 fuses gate and up into one projection; gpt2's Conv1D stores its weights as (in, out)
    from transformers import AutoModelForCausalLM

    model = tiny_model(family, seed=0)
    ids = torch.randint(0, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    report = loraprune_(model, ids, sparsity=0.5, steps=4, prune_every=2, progress=False)
    ((before, after),) = report.widths.values()
    assert after == before // 2 and report.params_after < report.params_before
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids[:1]).logits, model.eval()(ids[:1]).logits, atol=1e-5)


def test_a_width_from_pretrained_cannot_rebuild_is_refused():
    model = tiny_model("bloom", seed=0)  # BLOOM's MLP is 4 × hidden, no config field
    ids = torch.randint(0, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="could not rebuild"):
        loraprune_(model, ids, steps=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
