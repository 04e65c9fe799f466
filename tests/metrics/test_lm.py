"""Language-model figures and speed: interleaved, paired, with spread."""

import pytest
import torch

from prunekit.metrics.lm import example_ids, lm_figures, lm_speed, measure_lm
from prunekit.models.hf import tiny_model


class _Tok:
    """The least a tokenizer needs for timed generation."""

    pad_token_id, eos_token_id = 0, 0

    def __call__(self, text, return_tensors="pt"):
        class _Enc:
            input_ids = torch.arange(1, 6).unsqueeze(0)
        return _Enc()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def test_a_wider_model_is_measured_slower_in_paired_rounds():
    torch.manual_seed(0)
    small = tiny_model("llama", hidden=32, layers=1)
    big = tiny_model("llama", hidden=256, layers=4, intermediate_size=1024)
    timed = lm_speed({"small": small, "big": big}, _Tok(), forward=True, gen_tokens=4, threads=1, budget_s=5)
    r = timed["ratios"]
    assert r["latency_batch8"]["of"] == "big/small" and r["latency_batch8"]["median"] > 2
    assert r["generation"]["median"] > 1
    for name in ("small", "big"):
        m = timed["models"][name]
        assert m["latency_batch1"]["runs"] >= 3 and m["generation"]["tokens"] == 4
    assert timed["timing"]["threads"] == 1 and timed["timing"]["interleaved"]
    assert timed["timing"]["generation"] == {"prompt_tokens": 5, "new_tokens": 4, "greedy": True,
                                             "rounds": timed["models"]["big"]["generation"]["runs"]}


def test_figures_and_one_model_measure():
    model = tiny_model("llama")
    ids = example_ids(model, 2, tokens=16)
    assert ids["input_ids"].shape == (2, 16) and int(ids["input_ids"].max()) < model.config.vocab_size
    f = lm_figures(model, ids["input_ids"], macs=True, progress=False)
    assert f["params"] == sum(p.numel() for p in model.parameters()) and f["perplexity"] > 1
    assert f["macs_128_tokens"] > 0 and "tokens_per_s" not in f
    m = measure_lm(model, _Tok(), ids["input_ids"], gen_tokens=3, progress=False, speed=True)
    assert m["tokens_per_s"] > 0 and m["latency_ms_batch8"] > 0 and m["timing"]["models"] == ["model"]
    assert m["perplexity"] == pytest.approx(f["perplexity"])
