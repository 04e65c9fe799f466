"""Real model (slow): merging into SmolLM2-135M given by its alias (a GGUF file, converted once) reloads and
keeps the base's perplexity when the deltas are small."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_merge_into_the_packaged_smollm2(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from prunekit.cli import main
    from prunekit.datasets.text import eval_windows
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model

    lm = load_model("smollm2-135m")
    windows = eval_windows(lm.tokenizer, "pydocs", 2, 128, default=True, say=lambda _: None)
    base_ppl = perplexity(lm.model, windows, progress=False)
    gen = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        with torch.no_grad():
            noisy = {k: v + 2e-4 * torch.randn(v.shape, generator=gen) for k, v in lm.model.state_dict().items()}
        ft = type(lm.model)(lm.model.config)
        ft.load_state_dict(noisy, strict=False)
        ft.tie_weights()
        ft.save_pretrained(tmp_path / name)
        lm.tokenizer.save_pretrained(tmp_path / name)
    out = tmp_path / "merged"
    assert main(["merge", "--base", "smollm2-135m", "--models", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--method", "dare_ties", "--density", "0.1", "--seed", "0", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any("converted" in n for n in report["notes"])
    assert all(abs(d["kept"] - 0.1) < 0.01 and d["large_share"] == 0 for d in report["deltas"])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert perplexity(merged, windows, progress=False) == pytest.approx(base_ppl, rel=0.05)
