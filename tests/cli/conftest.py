"""Shared CLI fixtures: a tiny Llama folder with a real tokenizer, and a folder of text."""

import pytest

from prunekit.models.hf import tiny_model
from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny Llama with a real (byte-level BPE) tokenizer, saved as a Hugging Face folder, and a text folder."""
    fast = tiny_tokenizer()
    return write_tiny_folder(tmp_path_factory.mktemp("tiny"), tiny_model("llama", vocab_size=fast.vocab_size), fast)
