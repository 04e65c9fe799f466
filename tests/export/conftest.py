"""Tiny Llama models with a real byte-level BPE tokenizer, for the export tests (no download)."""

from __future__ import annotations

import copy

import pytest
import torch

TEXT = ("The interpreter reads a line, parses it and runs it. Modules group functions and classes; "
        "a package groups modules. def f(x): return x + 1 ")


@pytest.fixture(scope="session")
def tokenizer():
    from prunekit.models.tiny import tiny_tokenizer

    return tiny_tokenizer(TEXT, bos_token="<eos>")


def make_llama(vocab: int, tie: bool = True, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    fields = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie, bos_token_id=0,
                  eos_token_id=0, max_position_embeddings=256)
    fields.update(overrides)
    return AutoModelForCausalLM.from_config(LlamaConfig(**fields)).eval()


@pytest.fixture
def llama(tokenizer):
    return make_llama(len(tokenizer))


def pruned(model, pattern: str = "unstructured", sparsity: float | None = 0.5):
    """``model`` with half its in-scope weights zeroed by magnitude (masks baked in)."""
    import prunekit as pk

    if pattern == "unstructured":
        pk.prune_(model, method="magnitude", sparsity=sparsity)
    else:
        pk.prune_(model, method="magnitude", pattern=pattern)
    pk.finalize_(model)
    return model


def rounded(model, dtype=torch.bfloat16):
    """A copy whose parameters (not buffers) went through ``dtype``: what a save in ``dtype`` holds."""
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.data = p.data.to(dtype).to(torch.float32)
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def old_stack(monkeypatch):
    """Write compressed folders here as where transformers 4.x + compressed-tensors <= 0.14 read them (this
    environment's stack does not: save_model refuses). Tests of the layout itself pass read_back=False
    and read the folder with prunekit's own reader; tests/export/test_readers.py reads them in a 4.x venv."""
    monkeypatch.setattr("prunekit.export.save.compressed_reader", lambda: "stock")
