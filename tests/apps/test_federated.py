"""Federated pruning: the Dirichlet split, the byte counts, FedAvg's average, the server's masks."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.apps.federated import (client_update, dirichlet_split, effective_state, federated_prune_,
                                     payload_nbytes, progressive_schedule)
from prunekit.core.mask import get_mask
from tests.apps.federated_data import make_clients


def tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


_clients = make_clients


def test_dirichlet_split_is_a_partition_and_skewed():
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_split(y, 5, alpha=0.1, seed=0)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1000))
    # alpha = 0.1: each client is dominated by few classes; the top class share is far above the IID 0.1
    top = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top) > 0.4
    iid = dirichlet_split(y, 5, alpha=1000.0, seed=0)
    assert max(np.bincount(y[p], minlength=10).max() / len(p) for p in iid) < 0.2


def test_dirichlet_split_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split([0, 1], 2, alpha=0)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_split([0, 1], 3, alpha=1.0)


def test_payload_bytes_dense_and_sparse():
    t = torch.zeros(100, 8)
    t[:10] = 1.0  # 80 non-zeros of 800
    state = {"w": t, "b": torch.ones(8)}
    assert payload_nbytes(state, sparse=False) == 800 * 4 + 8 * 4
    # sparse: bitmask 100 bytes + 80 values × 4; the 8-entry bias (< 64 entries) stays dense
    assert payload_nbytes(state, sparse=True) == 100 + 80 * 4 + 8 * 4


def test_schedule_warm_up_and_ramp():
    s = progressive_schedule(0.8, 5, prune_until=0.5)
    assert s[0] == 0.0 and s[2] == pytest.approx(0.8) and s[-1] == pytest.approx(0.8)
    assert 0 < s[1] < 0.8


def test_fedavg_is_the_size_weighted_mean_of_client_updates():
    clients = _clients()
    clients[0] = TensorDataset(*(t[:32] for t in clients[0].tensors))  # unequal sizes: 32, 48, 48
    model = tiny()
    start = effective_state(model)
    updates = [client_update(tiny, start, {}, c.tensors[0], c.tensors[1], 1.0, 0.05, 32, 100003 * 0 + 0 * 1009 + k)
               for k, c in enumerate(clients)]
    report = federated_prune_(model, tiny, clients, rounds=1, sparsity=0.0, batch_size=32)
    w = np.array([32, 48, 48]) / 128
    expect = sum(float(wi) * u["1.weight"] for wi, u in zip(w, updates))
    # the mean of three float32 tensors in another order: a few ulps of the weights' scale
    torch.testing.assert_close(model[1].weight, expect, rtol=1e-6, atol=1e-6)
    assert report.rounds[0].sparsity == 0.0


def test_server_masks_hold_and_bytes_shrink():
    clients, model = _clients(), tiny()
    dense_model = tiny()
    dense = federated_prune_(dense_model, tiny, clients, rounds=4, sparsity=0.0, batch_size=16,
                             sparse_payload=False, test=clients[0])
    rep = federated_prune_(model, tiny, clients, rounds=4, sparsity=0.9, prune_until=0.5, batch_size=16,
                           test=clients[0])
    mask = get_mask(model[1])
    assert mask is not None
    # the default scope leaves the output head dense: 90% of the first Linear's 16·32 = 512 weights go
    assert get_mask(model[3]) is None
    assert int(mask.sum()) == round(0.1 * 512)
    assert int((model[1].weight != 0).sum()) <= int(mask.sum())
    # last round, per client: first weight as bitmask (512/8) + 51 values, its bias, head weight and bias dense
    per_client = 512 // 8 + 51 * 4 + 32 * 4 + 96 * 4 + 3 * 4
    assert rep.rounds[-1].download_bytes == 3 * per_client
    assert rep.rounds[-1].upload_bytes == 3 * per_client  # clients train under the mask: zeros stay zeros
    assert dense.rounds[-1].download_bytes == 3 * (512 + 32 + 96 + 3) * 4
    assert rep.total_bytes < 0.6 * dense.total_bytes
    assert dense.total_bytes == dense.dense_bytes
    assert rep.rounds[-1].accuracy is not None and rep.rounds[-1].accuracy > 0.5  # 3 separable clusters


def test_bad_input_changes_nothing():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="runner"):
        federated_prune_(model, tiny, _clients(), rounds=2, sparsity=0.5, runner="threads")
    with pytest.raises(ValueError, match="same parameters"):
        federated_prune_(model, lambda: nn.Linear(16, 3), _clients(), rounds=2, sparsity=0.5)
    with pytest.raises(ValueError, match="sparsity"):
        federated_prune_(model, tiny, _clients(), rounds=2, sparsity=1.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_processes_and_ray_give_the_serial_model():
    import functools

    from prunekit.models.reference import MLP

    # workers import model_fn by name: a library class, not this test module (pytest imports it outside sys.path)
    build = functools.partial(MLP, 16, (32,), 3)
    clients = _clients()
    models = {}
    for runner in ("serial", "processes", "ray"):
        torch.manual_seed(1)
        m = build()
        federated_prune_(m, build, clients, rounds=2, sparsity=0.5, prune_until=1.0, batch_size=16, runner=runner,
                         select=("global", "uniform"))
        models[runner] = m
    for runner in ("processes", "ray"):
        # same pure function on the same inputs in another process: bit-identical float32 results
        for a, b in zip(models["serial"].state_dict().values(), models[runner].state_dict().values()):
            assert torch.equal(a, b), runner


def bn_model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 3))


def test_client_bn_loss_recomputes_the_statistics_on_local_data():
    from prunekit.apps.federated import client_bn_loss

    model = bn_model()
    with torch.no_grad():
        model[2].running_mean.fill_(5.0)  # stale statistics the candidate must not be judged by
        model[2].running_var.fill_(9.0)
    state = effective_state(model)
    mask = torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    x, y = _clients(1, per=40)[0].tensors
    loss, n = client_bn_loss(bn_model, state, {"1": mask}, x, y, batch_size=40)  # one batch: plain moments
    w = model[1].weight.detach() * mask
    h = x @ w.t() + model[1].bias.detach()
    mu, var = h.mean(0), h.var(0, unbiased=True)  # BatchNorm's running variance is the unbiased one
    z = (h - mu) / torch.sqrt(var + model[2].eps) * model[2].weight.detach() + model[2].bias.detach()
    logits = model[6](model[5](model[4](torch.relu(z))))
    want = float(nn.functional.cross_entropy(logits, y, reduction="sum").detach())
    assert n == 40
    assert loss == pytest.approx(want, rel=1e-5)
    # the stale statistics would have given another loss: the recomputation is what is judged
    stale = bn_model()
    stale.load_state_dict(model.state_dict())
    with torch.no_grad():
        stale[1].weight.mul_(mask)
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(stale.eval()(x), y, reduction="sum")) != pytest.approx(want, rel=1e-2)


def test_adaptive_bn_selection_picks_the_lowest_weighted_loss(monkeypatch):
    import copy

    from prunekit.apps import fedtiny
    from prunekit.methods import prune_

    clients = _clients(3)
    model = bn_model()

    def kept_first(cand):
        twin = copy.deepcopy(model)
        prune_(twin, "magnitude", 0.8, allocation=cand, progress=False)
        return int(get_mask(twin[1]).sum())

    # a stand-in client that prefers the candidate keeping most of the first layer (every client agrees)
    monkeypatch.setattr(fedtiny, "client_bn_loss",
                        lambda fn, state, masks, x, y, bs: (-float(masks["1"].sum()) * len(y), len(y)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = federated_prune_(model, bn_model, clients, rounds=3, sparsity=0.8, prune_until=1.0, batch_size=16,
                           select=("uniform", "erk"))
    want = max(("uniform", "erk"), key=kept_first)
    assert rep.allocation == want and rep.selection["chosen"] == want
    assert rep.selection["losses"] == {c: -float(kept_first(c)) for c in ("uniform", "erk")}
    assert kept_first("uniform") != kept_first("erk")  # the two candidates really differ
    # the last round prunes to 0.8 with the chosen allocation: its per-layer counts (they depend on shapes only)
    twin = bn_model()
    twin.load_state_dict(before)
    prune_(twin, "magnitude", 0.8, allocation=want, progress=False)
    assert [int(get_mask(model[i]).sum()) for i in (1, 4)] == [int(get_mask(twin[i]).sum()) for i in (1, 4)]
    # its bytes: both candidates to 3 clients, 16 bytes back from each per candidate, all in the total
    assert rep.selection["upload_bytes"] == 2 * 3 * 16
    assert rep.total_bytes == rep.selection["download_bytes"] + rep.selection["upload_bytes"] + sum(
        r.download_bytes + r.upload_bytes for r in rep.rounds)


def test_adaptive_bn_selection_runs_on_real_clients():
    clients = _clients(3)
    model = bn_model()
    rep = federated_prune_(model, bn_model, clients, rounds=3, sparsity=0.9, batch_size=16,
                           select=("global", "uniform", "erk", "lamp"), test=clients[0])
    losses = rep.selection["losses"]
    assert set(losses) == {"global", "uniform", "erk", "lamp"}
    assert rep.allocation == min(losses, key=losses.get)
    assert all(0 < v < 10 for v in losses.values())  # mean cross-entropy per example over 3 classes
    assert rep.allocation in str(rep)


def test_bad_selection_changes_nothing(monkeypatch):
    from prunekit.core.allocate import ALLOCATIONS

    def needs_costs(scores, sparsity, costs):  # an allocation that needs more than the weights
        raise AssertionError("unreachable")

    monkeypatch.setitem(ALLOCATIONS._items, "needs_costs", needs_costs)
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="two or more distinct"):
        federated_prune_(model, bn_model, _clients(), rounds=2, sparsity=0.5, select=("global",))
    with pytest.raises(ValueError, match="unknown allocation.*'nope'"):
        federated_prune_(model, bn_model, _clients(), rounds=2, sparsity=0.5, select=("global", "nope"))
    with pytest.raises(ValueError, match="needs sparsity > 0"):
        federated_prune_(model, bn_model, _clients(), rounds=2, sparsity=0.0, select=("global", "erk"))
    with pytest.raises(ValueError, match="allocation 'needs_costs' cannot prune this model by magnitude alone"):
        federated_prune_(model, bn_model, _clients(), rounds=2, sparsity=0.5, select=("global", "needs_costs"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
