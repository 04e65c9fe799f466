import copy

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import tiny_model
from prunekit.train import RECOVERY, RecoveryConfig, recover_lm_
from prunekit.train.recovery_lm import training_windows


def _text(n=48, seqlen=32, seed=0):
    """Token ids with structure a model can learn: each token mostly follows from the one before."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, seqlen, dtype=torch.long)
    ids[:, 0] = torch.randint(0, 64, (n,), generator=g)
    for j in range(1, seqlen):
        noise = torch.randint(0, 64, (n,), generator=g)
        follow = torch.rand(n, generator=g) < 0.8
        ids[:, j] = torch.where(follow, (ids[:, j - 1] * 5 + 3) % 64, noise)
    return ids


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=64, hidden=32, layers=2)
    recover_lm_(model, _text(), recover="full", steps=60, lr=3e-3, batch_size=8, progress=False)
    return model


def test_each_mode_trains_its_share_and_lowers_the_loss(trained):
    calib, held = _text(seed=1), _text(16, seed=2)
    pruned = copy.deepcopy(trained)
    pk.prune_(pruned, "magnitude", 0.7, progress=False)
    base = perplexity(pruned, held, progress=False)
    masks = {n: get_mask(m).clone() for n, m in pk.masked_modules(pruned)}
    results = {}
    for mode in ("bias_norm", "lora", "full"):
        m = copy.deepcopy(pruned)
        r = recover_lm_(m, calib, recover=mode, steps=30, batch_size=8, eval_windows=held,
                        lr={"bias_norm": 1e-2, "lora": 3e-3, "full": 1e-3}[mode], progress=False)
        results[mode] = r
        assert r.perplexity_before == pytest.approx(base)  # before any step: the same weights, the same arithmetic
        assert r.perplexity_after < r.perplexity_before
        assert r.steps == 30 and r.tokens == 30 * 8 * 32 and len(r.losses) == 30
        for n, mod in pk.masked_modules(m):  # masks kept, exactly
            assert torch.equal(get_mask(mod), masks[n])
        assert all(p.requires_grad for p in m.parameters())
    norms = sum(p.numel() for n, p in trained.named_parameters() if "norm" in n)
    assert results["bias_norm"].trained_params == norms
    assert results["full"].trained_params == results["full"].total_params
    assert results["bias_norm"].trained_fraction < results["lora"].trained_fraction < 1
    d = results["lora"].to_dict()
    assert d["loss_last"] < d["loss_first"] and "recovery (lora)" in str(results["lora"])


def test_lora_merges_back_and_keeps_sparsity(trained):
    m = copy.deepcopy(trained)
    pk.prune_(m, "magnitude", 0.5, progress=False)
    pk.finalize_(m)  # zeros baked in, no masks: keep_zeros must still keep them
    zeros = {n: (mod.weight == 0).clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)
             and n != "lm_head"}
    w = m.model.layers[0].mlp.up_proj.weight.detach().clone()
    recover_lm_(m, _text(seed=3), recover="lora", steps=10, batch_size=4, lr=1e-2, progress=False)
    assert not any(torch.nn.utils.parametrize.is_parametrized(mod) for mod in m.modules())
    assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, w)  # the adapters were merged in
    for n, mod in m.named_modules():
        if n in zeros:
            assert bool((mod.weight[zeros[n]] == 0).all())


def test_training_windows_and_bad_input(trained):
    ids = _text(4, 32)
    assert training_windows(ids, 8).shape == (16, 8)
    assert training_windows([ids[:2], ids[2:]]).shape == (4, 32)
    m = copy.deepcopy(trained)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="calibration text"):
        recover_lm_(m, None, recover="lora")
    with pytest.raises(ValueError, match="token ids"):
        recover_lm_(m, torch.randn(4, 8), recover="lora")
    with pytest.raises(ValueError, match="larger than the 4 training windows"):
        recover_lm_(m, ids, recover="lora", batch_size=8)
    with pytest.raises(ValueError, match="vocabulary"):
        recover_lm_(m, ids + 1000, recover="full")
    with pytest.raises(ValueError, match="unknown option 'step'"):
        recover_lm_(m, ids, step=3)
    with pytest.raises(ValueError, match="recover"):
        recover_lm_(m, ids, recover="everything")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(torch.nn.utils.parametrize.is_parametrized(mod) for mod in m.modules())


def test_config_is_a_registered_recipe_stage():
    cfg = RECOVERY.parse_config({"recover": "lora", "steps": 20, "rank": 4})
    assert isinstance(cfg, RecoveryConfig) and cfg.steps == 20
    assert RecoveryConfig.from_json(cfg.to_json()) == cfg
    assert RECOVERY.names() == ["bias_norm", "full", "lora"]


def test_lora_recovery_is_repeatable_under_its_seed_whatever_the_global_rng_holds(trained):
    """LoRA's adapters are drawn from a generator seeded with the run's seed, not from torch's global RNG."""
    pruned = copy.deepcopy(trained)
    pk.prune_(pruned, "magnitude", 0.5, progress=False)
    calib = _text(seed=5)

    def run(seed, global_seed):
        m = copy.deepcopy(pruned)
        torch.manual_seed(global_seed)  # a different global state each time: it must not matter
        recover_lm_(m, calib, recover="lora", rank=2, steps=3, batch_size=4, lr=1e-2, seed=seed, progress=False)
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    first, again, other = run(0, 1), run(0, 2), run(1, 1)
    # the same seed: the same adapters, the same window order, the same kernels in one process: bit-equal
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # the seed does decide the adapters


def test_the_recover_stage_draws_lora_under_the_runs_seed(trained):
    from prunekit.pipeline import Workspace, parse_stage, run_stages

    pruned = copy.deepcopy(trained)
    pk.prune_(pruned, "magnitude", 0.5, progress=False)
    stage = parse_stage({"stage": "recover", "recover": "lora", "rank": 2, "steps": 2, "batch_size": 4})

    def run(seed, global_seed):
        torch.manual_seed(global_seed)
        ws = run_stages([stage], Workspace(model=copy.deepcopy(pruned), calibration=_text(seed=6), seed=seed,
                                           progress=False))
        return ws.model.model.layers[0].mlp.up_proj.weight.detach().clone()

    assert torch.equal(run(3, 0), run(3, 9)) and not torch.equal(run(3, 0), run(4, 0))
