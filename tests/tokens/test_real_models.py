"""The real models: all-MiniLM-L6-v2 (token merging) and SmolLM2-135M (FastV through generate)."""

import pytest
import torch
from torch import nn

import prunekit.tokens as pt

pytestmark = pytest.mark.slow

SENTENCES = [
    "The for statement in Python differs a bit from what you may be used to in C or Pascal.",
    "Rather than always iterating over an arithmetic progression of numbers, Python's for statement iterates over "
    "the items of any sequence, a list or a string, in the order that they appear in the sequence.",
    "Code that modifies a collection while iterating over that same collection can be tricky to get right.",
    "If you do need to iterate over a sequence of numbers, the built-in function range() comes in handy.",
    "The pass statement does nothing. It can be used when a statement is required syntactically but the program "
    "requires no action.",
    "A dictionary maps hashable keys to arbitrary objects; dictionaries are mutable and their keys must be unique "
    "within one dictionary, and they can be created by placing a comma-separated list of pairs within braces.",
    "Exceptions are raised when an error is detected, and they can be handled by the surrounding code or by any "
    "code that directly or indirectly invoked the code where the error occurred.",
    "The garbage collector frees memory that is no longer reachable, and reference counting releases most objects "
    "as soon as their last reference goes away, which keeps memory use predictable in long-running programs.",
]


def _embed(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_merged_embeddings_stay_close():
    from prunekit.models.hf import load_model

    loaded = load_model("minilm-l6")
    model, tok = loaded.model, loaded.tokenizer
    full = _embed(model, tok, SENTENCES)
    report = pt.merge_(model, r=3)
    assert report.family == "hf-bert"
    merged = _embed(model, tok, SENTENCES)  # padded batch: short rows give up padding first
    assert pt.last_forward(model)["tokens"][-1] == pt.last_forward(model)["tokens"][0] - 6 * 3
    cos = (merged * full).sum(-1)
    print("cosine to full:", [round(c, 4) for c in cos.tolist()])
    assert cos.min() > 0.9 and cos.mean() > 0.95
    # the neighbour structure survives: the most similar other sentence is unchanged for most
    same = ((merged @ merged.T).fill_diagonal_(-1).argmax(-1) == (full @ full.T).fill_diagonal_(-1).argmax(-1))
    assert same.float().mean() >= 0.75
    pt.unpatch_(model)
    assert torch.equal(_embed(model, tok, SENTENCES), full)


def test_smollm2_fastv_generates_with_a_smaller_cache():
    from prunekit.datasets.text import documents, split_documents
    from prunekit.models.hf import load_model

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    text = next(d.text for d in split_documents(documents("pydocs"), "evaluation") if len(d.text) > 4000)
    ids = tok(text, return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    n_layers = model.config.num_hidden_layers
    report = pt.prune_(model, method="fastv", keep=0.5, layer=2, seq_len=256)
    assert report.tokens_per_layer == [256, 256] + [128] * (n_layers - 2)
    with torch.no_grad():
        pruned = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    lengths = [layer.keys.shape[-2] for layer in pruned.past_key_values.layers]
    assert lengths == [256 + 7] * 2 + [128 + 7] * (n_layers - 2)
    # keeping half of a 256-token prompt after layer 2 leaves the first greedy token unchanged here
    assert pruned.sequences[0, 256] == full.sequences[0, 256]
    pt.unpatch_(model)
    with torch.no_grad():
        again = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(again, full.sequences)
