import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import tiny_model


class Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.p)


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    assert perplexity(Uniform(50), torch.randint(0, 50, (3, 9)), progress=False) == pytest.approx(50, rel=1e-5)


def test_matches_the_models_own_loss():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (4, 16))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, ids, batch_size=3, progress=False) == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_rejects_bad_windows():
    with pytest.raises(ValueError, match="seqlen ≥ 2"):
        perplexity(Uniform(5), torch.zeros(4, dtype=torch.long), progress=False)
