"""DAREx-q: the candidates of the search, the search's errors recomputed by hand, what the merge writes with the q
it found or was given, and bad input."""

import pytest
import torch
from safetensors.torch import load_file

from prunekit.merge import TensorFolder, merge, merge_config, merge_state_dicts
from prunekit.merge.darex import GRID, REFINE, _Model, candidates, search_q, survivors
from prunekit.models.hf import tiny_model


def test_candidates_are_log_spaced_and_hold_dares_q():
    qs = candidates(0.1)
    assert qs[0] == pytest.approx(0.05) and qs[-1] == pytest.approx(1.0) and 0.1 in qs
    ratios = [b / a for a, b in zip(qs, qs[1:]) if 0.1 not in (a, b)]
    assert max(ratios) == pytest.approx(min(ratios))  # evenly spaced in log
    assert len(qs) == GRID + 1
    inner = candidates(0.1, 0.2, 0.4, 4)
    assert inner[0] == pytest.approx(0.2) and inner[-1] == pytest.approx(0.4) and len(inner) == 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("darex")
    base = tiny_model("llama", seed=0)
    base.save_pretrained(root / "base")
    gen = torch.Generator().manual_seed(1)
    ft = tiny_model("llama", seed=0)
    with torch.no_grad():
        for p in ft.parameters():  # a delta with a shared direction per tensor, as fine-tunes have, plus noise
            direction = torch.randn(p.shape[-1], generator=gen)
            p.add_(2e-3 * direction * torch.rand(p.shape, generator=gen) + 5e-4 * torch.randn(p.shape, generator=gen))
    ft.save_pretrained(root / "a")
    ids = torch.randint(0, base.config.vocab_size, (6, 24), generator=gen)
    return root, ids


def test_search_finds_the_q_that_changes_the_hidden_states_least(folders, tmp_path):
    root, ids = folders
    base, ft = TensorFolder(root / "base"), TensorFolder(root / "a")
    config = merge_config("dare_linear", density=0.05, q="search", seed=2)
    q, summary = search_q(base, ft, config, 0, ids, base.names())
    # the error of every q tried, recomputed by hand: base + D̃/q against the fine-tune's last hidden states
    m = _Model(base, ft, config, 0, base.names())
    reference = m.hidden(ids, 4)
    m.to_base_()
    assert len(m.kept) == len(base.names())  # every tensor of this fine-tune changed
    for text, err in list(summary["tried"].items())[::3]:
        m.set_q_(float(text))
        got = float((m.hidden(ids, 4) - reference).pow(2).mean() / reference.pow(2).mean())
        assert got == pytest.approx(err, rel=1e-3)  # reached through other moves: float32 rounding apart
    assert summary["error"] == min(summary["tried"].values()) and summary["q"] == q
    assert summary["error"] <= summary["error_dare"] and summary["error"] <= summary["error_no_rescale"]
    assert len(summary["tried"]) == GRID + 1 + REFINE  # the grid (with DARE's q) and the refinement
    # what merge() writes is base + D̃/q with that q
    out = tmp_path / "m"
    report = merge(root / "base", [root / "a"], "dare_linear", density=0.05, q="search", seed=2, out=out,
                   progress=False, calibration=ids)
    assert report.q_search[0]["q"] == q
    written = load_file(str(out / "model.safetensors"))
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight"):
        kept = survivors(name, base, ft, config, 0)
        assert 0 < float((kept != 0).float().mean()) < 0.2
        assert torch.allclose(written[name].float() - base.get(name).float(), kept / q, rtol=1e-4, atol=1e-6)


def test_fixed_q_multiplies_the_survivors_by_its_inverse(folders):
    root, _ = folders
    base, ft = load_file(str(root / "base" / "model.safetensors")), load_file(str(root / "a" / "model.safetensors"))
    plain = merge_state_dicts(base, [ft], "dare_linear", density=0.1, seed=4, rescale=False)
    scaled = merge_state_dicts(base, [ft], "dare_linear", density=0.1, seed=4, q=0.25)
    for n in base:
        assert torch.allclose(scaled[n] - base[n], 4.0 * (plain[n] - base[n]), rtol=1e-5, atol=1e-7)


def test_state_dict_merge_takes_the_searched_q(folders):
    root, _ = folders
    base, ft = load_file(str(root / "base" / "model.safetensors")), load_file(str(root / "a" / "model.safetensors"))
    plain = merge_state_dicts(base, [ft], "dare_linear", density=0.1, seed=4, rescale=False)
    searched = merge_state_dicts(base, [ft], "dare_linear", density=0.1, seed=4, q="search", searched=[0.4])
    for n in base:
        assert torch.allclose(searched[n] - base[n], 2.5 * (plain[n] - base[n]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="one searched q per model"):
        merge_state_dicts(base, [ft], "dare_linear", density=0.1, q="search")
    # searched q values without q='search' would be ignored (DARE's 1/density applied): refused instead
    with pytest.raises(ValueError, match="would be ignored"):
        merge_state_dicts(base, [ft], "dare_linear", density=0.1, seed=4, searched=[0.4])


@pytest.mark.parametrize("fields,match", [
    (dict(q=0.0), r"q must be in \(0, 1\]"), (dict(q=1.5), r"q must be in \(0, 1\]"),
    (dict(q=0.5, rescale=False), "cannot be combined"), (dict(q="search", semantics="mergekit"), "cannot be combined"),
    (dict(q="sometimes"), "q"),
])
def test_bad_q_is_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        merge_config("dare_linear", density=0.1, **fields)


def test_search_without_a_tokenizer_or_calibration_fails_before_writing(folders, tmp_path):
    root, _ = folders
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="has no tokenizer"):
        merge(root / "base", [root / "a"], "dare_ties", density=0.1, q="search", out=out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="token ids"):
        merge(root / "base", [root / "a"], "dare_ties", density=0.1, q="search", out=out, progress=False,
              calibration=torch.rand(2, 8))
    with pytest.raises(ValueError, match="outside the base's vocabulary"):
        merge(root / "base", [root / "a"], "dare_ties", density=0.1, q="search", out=out, progress=False,
              calibration=torch.full((2, 8), 10**6))
    assert not out.exists()


def test_search_refuses_a_model_whose_parameters_match_no_tensor(folders):
    root, ids = folders
    base, ft = TensorFolder(root / "base"), TensorFolder(root / "a")
    config = merge_config("dare_linear", density=0.1, q="search")
    with pytest.raises(ValueError, match="none of .* parameters is a merged tensor"):
        search_q(base, ft, config, 0, ids, names=["not.a.tensor"])


def test_cli_takes_q(folders, tmp_path):
    from prunekit.cli import main

    root, _ = folders
    assert main(["merge", "--base", str(root / "base"), "--models", str(root / "a"), "--method", "dare_linear",
                 "--density", "0.1", "--q", "0.5", "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert main(["merge", "--base", str(root / "base"), "--models", str(root / "a"), "--method", "dare_linear",
                 "--density", "0.1", "--q", "half", "--out", str(tmp_path / "n"), "--quiet"]) != 0
    assert not (tmp_path / "n").exists()


def _base_and_fine_tune(family, tmp_path):
    """A tiny ``family`` model saved as ``base/`` and, nudged by 1e-3 noise, as ``a/``; calibration token ids."""
    from prunekit.models.hf import tiny_model

    base = tiny_model(family, seed=0)
    base.save_pretrained(tmp_path / "base")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    base.save_pretrained(tmp_path / "a")
    return torch.randint(0, base.config.vocab_size, (4, 16), generator=gen)


def test_a_search_that_cannot_move_every_tensor_says_so(tmp_path):
    # Qwen2-MoE's experts are stored per expert but loaded fused: the search cannot move them by name
    ids = _base_and_fine_tune("qwen2_moe", tmp_path)
    report = merge(tmp_path / "base", [tmp_path / "a"], "dare_linear", density=0.05, q="search", out=tmp_path / "m",
                   progress=False, calibration=ids)
    moved = report.q_search[0]["tensors"]
    assert 0 < moved < report.tensors_merged
    assert any(f"moved {moved} of the {report.tensors_merged}" in n for n in report.notes)


@pytest.mark.parametrize("family", ["gpt2", "opt", "phi3"])
def test_search_runs_on_other_families(family, tmp_path):
    # GPT-2 stores Conv1D weights as (in, out) and ties its head; OPT has biases and learned positions; Phi-3 fuses
    ids = _base_and_fine_tune(family, tmp_path)
    report = merge(tmp_path / "base", [tmp_path / "a"], "dare_ties", density=0.05, q="search", out=tmp_path / "m",
                   progress=False, calibration=ids)
    (found,) = report.q_search
    assert found["tensors"] == report.tensors_merged and 0.025 <= found["q"] <= 1.0
    assert found["error"] <= found["error_dare"] and not any("moved" in n for n in report.notes)
