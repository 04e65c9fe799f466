"""Property tests of prune_ end to end: idempotence, exact totals, masks across save/load and optimizer steps."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))


def _masks(model):
    return {n: pk.get_mask(m).clone() for n, m in pk.masked_modules(model)}


settings_ = settings(max_examples=25, deadline=None)
configs = st.one_of(
    st.tuples(st.sampled_from(["unstructured", "row", "block:4x4"]), st.floats(0.05, 0.95),
              st.sampled_from(["uniform", "global", "global_floor", "erk", "lamp"])),
    st.tuples(st.sampled_from(["2:4", "4:8"]), st.none(), st.just("uniform")),
)


@settings_
@given(cfg=configs, seed=st.integers(0, 50), method=st.sampled_from(["magnitude", "random"]))
def test_pruning_twice_with_the_same_settings_changes_nothing(cfg, seed, method):
    pattern, sparsity, allocation = cfg
    model = _net(seed)
    first = pk.prune_(model, method, sparsity, pattern=pattern, allocation=allocation, seed=seed)
    masks = _masks(model)
    second = pk.prune_(model, method, sparsity, pattern=pattern, allocation=allocation, seed=seed)
    assert first.sparsity == second.sparsity
    assert all(torch.equal(masks[n], m) for n, m in _masks(model).items())
    if pattern == "unstructured":
        assert abs(first.zeros_in_scope - first.target_sparsity * first.params_in_scope) <= len(first.layers)


@settings_
@given(cfg=configs, seed=st.integers(0, 50))
def test_masks_survive_save_load_and_optimizer_steps(cfg, seed):
    pattern, sparsity, allocation = cfg
    model = _net(seed)
    pk.prune_(model, "magnitude", sparsity, pattern=pattern, allocation=allocation)
    masks = _masks(model)
    fresh = _net(seed + 1)
    pk.load_state_dict_(fresh, model.state_dict())
    assert _masks(fresh).keys() == masks.keys()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        loss = fresh(torch.randn(2, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, module in pk.masked_modules(fresh):
        assert torch.equal(pk.get_mask(module), masks[name])
        assert bool((module.weight.detach()[~masks[name]] == 0).all())
