"""Shared CLI fixtures: a tiny Llama folder with a real tokenizer, and a folder of text."""

import pytest

from prunekit.models.hf import tiny_model

TEXT = ("The interpreter reads a line, parses it and runs it. Modules group functions and classes; "
        "a package groups modules. Exceptions unwind the stack until a handler catches them. ")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny Llama with a real (byte-level BPE) tokenizer, saved as a Hugging Face folder, and a text folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    model = tiny_model("llama", vocab_size=fast.vocab_size)
    model.save_pretrained(root / "model")
    fast.save_pretrained(root / "model")
    texts = root / "texts"
    texts.mkdir()
    for i in range(30):
        (texts / f"page{i:02d}.txt").write_text(f"Page {i}. " + TEXT * 3)
    return root


