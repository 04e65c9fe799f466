"""Token ids are checked at the boundary: shape, type, vocabulary and context, for calibration and evaluation."""

import pytest
import torch

import prunekit as pk
from prunekit.core.inputs import check_token_ids, context_length, vocab_size
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", vocab_size=128)


def test_vocab_and_context_of_a_model(llama):
    assert vocab_size(llama) == 128 and context_length(llama) == llama.config.max_position_embeddings
    assert vocab_size(torch.nn.Linear(2, 2)) is None and context_length(torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("ids, match", [
    (torch.randint(0, 128, (16,)), r"token ids of shape \((batch|nsamples|n), seqlen.*got .*\(16,\)"),
    (torch.randint(0, 128, (2, 3, 4)), r"token ids of shape .*got .*\(2, 3, 4\)"),
    (torch.zeros(0, 8, dtype=torch.long), r"got shape \(0, 8\)"),
    (torch.rand(2, 8), "integer token ids.*got torch.float32"),
    (torch.full((2, 8), 128), "ids from 128 to 128, outside the model's vocabulary of 128"),
    (torch.full((2, 8), -1), "ids from -1 to -1, outside"),
    (torch.zeros(1, 5000, dtype=torch.long), "5,000 tokens per window, longer than the model's context of 2,048"),
])
@pytest.mark.parametrize("use", ["wanda", "sparsegpt", "perplexity"])
def test_bad_token_ids_are_named_before_any_work(llama, ids, match, use):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        if use == "perplexity":
            perplexity(llama, ids, progress=False)
        else:
            pk.prune_(llama, use, 0.5, calibration=ids, progress=False)
    assert list(pk.masked_modules(llama)) == []
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())


def test_check_token_ids_accepts_good_ids(llama):
    check_token_ids(torch.randint(0, 128, (2, 16)), llama)
    check_token_ids(torch.randint(0, 128, (2, 16), dtype=torch.int32), llama)
