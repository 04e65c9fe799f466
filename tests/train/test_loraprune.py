"""LoRAPrune: the schedule and the LoRA-guided gradient by hand, the estimate against the true gradient, neuron
scores by hand, masks that silence the adapters, and the whole run on a tiny Llama (smaller, reloads, seeded);
bad input is refused before anything changes."""

import pytest
import torch
from torch import nn

from torch.nn.utils import parametrize

from prunekit.core.mask import get_mask, set_mask_
from prunekit.models.hf import tiny_model
from prunekit.train.loraprune import LoRAPruneConfig, lora_gradient, loraprune_, scheduled_sparsity
from prunekit.train.loraprune_units import HeadLayer, NeuronLayer
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
    rows = NeuronLayer(lin, rows=True).unit_scores("magnitude", 3)  # B = 0: |W| summed per row = [2, 3, 4] / ‖·‖
    assert torch.allclose(rows, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64) / 29 ** 0.5)
    cols = NeuronLayer(lin, rows=False).unit_scores("magnitude", 2)  # per column = [3, 6] / ‖·‖
    assert torch.allclose(cols, torch.tensor([3.0, 6.0], dtype=torch.float64) / 45 ** 0.5)
    with torch.no_grad():
        adapter.B.fill_(1.0)
    NeuronLayer(lin, rows=True).mask_units_(torch.tensor([1]), 3)
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


def _masked_attention(model, rank=2):
    """Layer 0's attention of a tiny Llama with masks and LoRA adapters on q/k/v/o, as loraprune_ sets them."""
    from prunekit.structured.transformers.layouts import attention_layers

    part = attention_layers(model)[0]
    for lin in (part.holder.q_proj, part.holder.k_proj, part.holder.v_proj, part.holder.o_proj):
        set_mask_(lin, torch.ones(lin.weight.shape, dtype=torch.bool))
        _adapt(lin, rank)
    return part


def test_head_scores_by_hand_and_masks_silence_the_adapters():
    model = tiny_model("llama", seed=0)  # 4 query heads in 2 key/value groups, head_dim 16
    part = _masked_attention(model)
    attn = part.holder
    w = {n: getattr(attn, n).parametrizations.weight.original.detach().abs().double() for n in ("q_proj", "k_proj",
                                                                                               "v_proj", "o_proj")}
    # B = 0, so the effective weight is W: per group, its rows of q (heads 2g, 2g+1), k and v, and its o columns
    want = torch.zeros(2, dtype=torch.float64)
    for name, rows, per in (("q_proj", True, 32), ("k_proj", True, 16), ("v_proj", True, 16), ("o_proj", False, 32)):
        s = w[name].sum(1) if rows else w[name].sum(0)
        per_group = torch.stack([s[g * per:(g + 1) * per].sum() for g in range(2)])
        want += per_group / per_group.norm()
    assert torch.allclose(HeadLayer(part, "group").unit_scores("magnitude"), want)
    # per query head: q rows and o columns only
    want_q = torch.zeros(4, dtype=torch.float64)
    for name, rows in (("q_proj", True), ("o_proj", False)):
        s = w[name].sum(1) if rows else w[name].sum(0)
        per_head = torch.stack([s[h * 16:(h + 1) * 16].sum() for h in range(4)])
        want_q += per_head / per_head.norm()
    assert torch.allclose(HeadLayer(part, "query").unit_scores("magnitude"), want_q)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        with torch.no_grad():
            next(p for p in getattr(attn, n).parametrizations.weight if hasattr(p, "B")).B.fill_(1.0)
    HeadLayer(part, "group").mask_units_(torch.tensor([1]))
    assert torch.count_nonzero(attn.q_proj.weight[32:]) == 0 and torch.count_nonzero(attn.q_proj.weight[:32]) > 0
    assert torch.count_nonzero(attn.k_proj.weight[16:]) == 0 and torch.count_nonzero(attn.v_proj.weight[16:]) == 0
    assert torch.count_nonzero(attn.o_proj.weight[:, 32:]) == 0 and torch.count_nonzero(attn.o_proj.weight[:, :32]) > 0


def test_query_heads_go_evenly_from_every_group():
    model = tiny_model("llama", seed=0)
    part = _masked_attention(model)
    layer = HeadLayer(part, "query")
    scores = torch.tensor([0.4, 0.1, 0.2, 0.3], dtype=torch.float64)  # group 0: heads 0, 1; group 1: heads 2, 3
    gone = torch.zeros(4, dtype=torch.bool)
    assert layer.next_dead(scores, gone, 1).tolist() == [1, 2]  # the weaker head of each group, not the two weakest
    gone[[1, 2]] = True
    assert layer.next_dead(scores, gone, 1).numel() == 0
    assert HeadLayer(part, "group").next_dead(torch.tensor([0.7, 0.2], dtype=torch.float64),
                                              torch.zeros(2, dtype=torch.bool), 1).tolist() == [1]


@pytest.mark.parametrize("what", ["heads", "both"])
def test_heads_go_during_the_fine_tune_and_the_model_reloads(windows, what, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", seed=0)
    report = loraprune_(model, windows, what=what, sparsity=0.5, steps=12, prune_every=3, progress=False)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert report.heads == (4, 2) and report.kv_heads == (2, 1) and report.attention_layers == 2
    for layer in model.model.layers:
        assert layer.self_attn.q_proj.weight.shape == (32, 64) and layer.self_attn.k_proj.weight.shape == (16, 64)
        assert layer.self_attn.o_proj.weight.shape == (64, 32) and type(layer.self_attn.o_proj.weight) is nn.Parameter
    assert model.config.intermediate_size == (64 if what == "both" else 128)
    assert "heads 4 → 2" in str(report) and report.params_after < report.params_before
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(windows[:2]).logits, model.eval()(windows[:2]).logits, atol=1e-5)


def test_head_cuts_that_remove_nothing_or_do_not_reload_are_refused(windows):
    model = tiny_model("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="removes none.*reachable fractions 50%"):
        loraprune_(model, windows, what="heads", head_sparsity=0.2, steps=2, progress=False)
    gpt2 = tiny_model("gpt2", seed=0)  # GPT-2 derives the head size from the hidden size: fewer heads do not reload
    ids = windows % gpt2.config.vocab_size
    with pytest.raises(ValueError, match="could not rebuild"):
        loraprune_(gpt2, ids, what="heads", steps=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert gpt2.config.n_head == 4


@pytest.mark.parametrize("family", ["qwen2", "phi3", "qwen2_moe"])
def test_heads_of_other_layouts_go_and_reload(family, tmp_path):
    # phi3 fuses q, k and v into one projection (GPT-NeoX's interleaved one derives its head size from the hidden
    # size, so fewer heads do not reload there: refused like GPT-2's above); an MoE model's heads can go (its
    # experts cannot: what="neurons" refuses it)
    from transformers import AutoModelForCausalLM

    model = tiny_model(family, seed=0)
    ids = torch.randint(0, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    report = loraprune_(model, ids, what="heads", sparsity=0.5, steps=4, prune_every=2, progress=False)
    assert report.heads == (4, 2) and model.config.num_attention_heads == 2
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids[:1]).logits, model.eval()(ids[:1]).logits, atol=1e-5)
