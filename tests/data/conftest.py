"""Fixtures shared by the data tests."""

import shutil

import pytest
import torch

from prunekit.models.packaged import packaged_model_path


def _minilm_or_skip():
    try:
        return packaged_model_path("minilm-l6")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A randomly initialized 2-layer BERT with MiniLM's real tokenizer."""
    from transformers import BertConfig, BertModel

    src = _minilm_or_skip()
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder
