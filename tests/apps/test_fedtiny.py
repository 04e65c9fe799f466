"""FedTiny's progressive pruning: the clients' top-k gradients, the server's drop-and-grow step, the plan of rounds,
and the whole loop (sparsity held, bytes counted, bad input refused before any change)."""

import math

import pytest
import torch
from torch import nn

from prunekit.apps.federated import federated_prune_
from prunekit.apps.federated_clients import client_topk_grads, effective_state, topk_nbytes
from prunekit.apps.fedtiny import adjust_plan, grow_prune_
from prunekit.core.mask import get_mask, set_mask_, weight_of
from tests.apps.federated_data import make_clients


def linear() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 3, bias=False))


def tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


_clients = make_clients


def test_client_topk_grads_is_the_cross_entropy_gradient_at_pruned_entries():
    model = linear()
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    set_mask_(model[0], mask)
    state = effective_state(model)  # pruned entries zero, as a client receives them
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    idx, val = client_topk_grads(linear, state, "0", mask, x, y, k=3, batch_size=4)
    # by hand, in float64: dL/dW = (softmax(x Wᵀ) − onehot(y))ᵀ x / n with W the effective weight
    w = state["0.weight"].double()
    p = torch.softmax(x.double() @ w.T, dim=1)
    p[torch.arange(10), y] -= 1
    grad = (p.T @ x.double() / 10).reshape(-1)
    pruned = [i for i in range(12) if not mask.reshape(-1)[i]]
    want = sorted(sorted(pruned, key=lambda i: -abs(float(grad[i])))[:3])
    assert idx.tolist() == want
    assert torch.allclose(val.double(), grad[want], rtol=1e-5, atol=1e-7)
    assert topk_nbytes(len(idx)) == 24


def test_grow_prune_drops_the_smallest_kept_and_grows_the_largest_summed_gradient():
    model = linear()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, 9.0, -0.1, 9.0], [9.0, 0.3, 9.0, -2.0], [1.0, -0.05, 9.0, 9.0]]))
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    set_mask_(model[0], mask)
    # kept (flat): 0 (0.5), 2 (−0.1), 5 (0.3), 7 (−2.0), 8 (1.0), 9 (−0.05); pruned: 1, 3, 4, 6, 10, 11
    topks = [(torch.tensor([1, 4]), torch.tensor([0.2, -1.0])),    # client A, weight 0.25
             (torch.tensor([4, 11]), torch.tensor([0.4, 0.9]))]    # client B, weight 0.75
    # summed: 1 → 0.05, 4 → −0.25 + 0.3 = 0.05, 11 → 0.675; k = round(0.34 × 6) = 2
    moved = grow_prune_(model, "0", topks, [0.25, 0.75], 0.34)
    assert moved["k"] == 2
    assert moved["dropped"] == [2, 9]              # |−0.1| and |−0.05|: the two smallest kept
    assert moved["grown"][-1] == 11 and len(moved["grown"]) == 2 and moved["grown"][0] in (1, 4)
    new = get_mask(model[0]).reshape(-1)
    assert int(new.sum()) == int(mask.sum())       # the layer's sparsity is unchanged
    assert not new[2] and not new[9] and new[11]
    w = weight_of(model[0]).detach().reshape(-1)
    assert float(w[11]) == 0.0 and float(w[moved["grown"][0]]) == 0.0  # grown at zero
    assert float(model[0].weight.detach().reshape(-1)[11]) == 0.0  # and the effective weight too


def test_grow_prune_grows_only_what_the_clients_reported():
    model = linear()
    set_mask_(model[0], torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool))
    before = get_mask(model[0]).clone()
    moved = grow_prune_(model, "0", [(torch.tensor([6]), torch.tensor([0.3]))], [1.0], 0.5)
    assert moved["k"] == 1 and moved["grown"] == [6]  # k capped at the one reported candidate
    assert int(get_mask(model[0]).sum()) == int(before.sum())
    none = grow_prune_(model, "0", [(torch.tensor([], dtype=torch.long), torch.tensor([]))], [1.0], 0.5)
    assert none["k"] == 0
    with pytest.raises(ValueError, match="no mask"):
        grow_prune_(tiny(), "1", [], [], 0.1)


def test_adjust_plan_goes_backward_with_a_cosine_share():
    schedule = [0.0, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    plan = adjust_plan(schedule, ["a", "b", "c"], 0.3, until=0.8)
    assert sorted(plan) == [2, 3, 4, 5, 6, 7]      # from the first round at 0.9, below 8 = 0.8 × 10
    assert [plan[r][0] for r in sorted(plan)] == ["c", "b", "a", "c", "b", "a"]
    assert [plan[r][1] for r in sorted(plan)] == pytest.approx([0.3 * (1 + math.cos(math.pi * i / 6)) / 2
                                                               for i in range(6)])
    assert sorted(adjust_plan(schedule, ["a"], 0.3, until=1.0)) == list(range(2, 9))  # never the last round
    with pytest.raises(ValueError, match="adjust"):
        adjust_plan(schedule, ["a"], 0.0)


def test_progressive_pruning_moves_weights_at_equal_sparsity_and_counts_its_bytes():
    clients = _clients(3)
    base, grown = tiny(), tiny()
    rep0 = federated_prune_(base, tiny, clients, rounds=6, sparsity=0.8, prune_until=0.4, batch_size=16, seed=0)
    rep = federated_prune_(grown, tiny, clients, rounds=6, sparsity=0.8, prune_until=0.4, batch_size=16, seed=0,
                           adjust=0.3, adjust_until=1.0, test=clients[0])
    # the masked layers are the first two Linear (the classifier is left whole by prune_): rounds 3, 4, 5
    # (1-based) adjust them from the output side, cycling; round 6 trains the final mask
    assert [(a["round"], a["layer"]) for a in rep.adjustments] == [(3, "3"), (4, "1"), (5, "3")]
    assert all(a["k"] > 0 for a in rep.adjustments)
    for i in ("1", "3"):
        assert int(get_mask(grown._modules[i]).sum()) == int(get_mask(base._modules[i]).sum())
    assert any(not torch.equal(get_mask(grown._modules[i]), get_mask(base._modules[i])) for i in ("1", "3"))
    # against the same rounds without adjustment, each adjusting round uploads the same model payloads (equal
    # counts of kept weights) plus 3 clients × k × (a float32 value + an int32 index)
    extra = [r.upload_bytes - r0.upload_bytes for r, r0 in zip(rep.rounds, rep0.rounds)]
    assert extra == [0, 0, *(3 * 8 * a["k"] for a in rep.adjustments), 0]
    assert rep.total_bytes == sum(r.download_bytes + r.upload_bytes for r in rep.rounds)
    assert "progressive pruning moved" in str(rep)
    assert rep.rounds[-1].accuracy is not None and rep.rounds[-1].accuracy > 1 / 3


def test_bad_adjust_changes_nothing():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"adjust .* must be in \[0, 1\]"):
        federated_prune_(model, tiny, _clients(), rounds=6, sparsity=0.8, adjust=1.5)
    with pytest.raises(ValueError, match="needs sparsity > 0"):
        federated_prune_(model, tiny, _clients(), rounds=6, sparsity=0.0, adjust=0.2)
    with pytest.raises(ValueError, match="no round can adjust"):
        federated_prune_(model, tiny, _clients(), rounds=2, sparsity=0.8, adjust=0.2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
