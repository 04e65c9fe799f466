"""Vocabulary trimming: the trimmed tokenizer encodes its corpus identically (ids remapped), held-out words made of
kept tokens too, other text falls back to bytes (or unk) without loss; the model's rows follow; both reload with
stock from_pretrained / AutoTokenizer; bad input is refused before anything changes."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.shrink.vocab import BYTE_FALLBACK, plan_vocab, text_loss, trim_vocab_
from tests.tolerances import tol

TRAIN = ("The interpreter reads a line, parses it and runs it. Modules group functions and classes; a package "
         "groups modules. Exceptions unwind the stack until a handler catches them. Generators yield values "
         "lazily; iterators raise StopIteration when exhausted. Décorateurs wrap functions. ")
CORPUS = ["Modules group functions and classes.\n\n", "The interpreter reads a line and runs it.\n\n",
          "A handler catches exceptions; generators yield values.\n\n"]
HELD_OUT = ["Iterators raise StopIteration; packages group modules.", "Décorateurs wrap zyxw 日本 🤖 values."]


def sentencepiece_tokenizer(text: str = TRAIN, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A small Gemma-style tokenizer: BPE on '▁'-joined words with byte fallback (<0x00>…<0xFF> in the vocabulary),
    <pad> <eos> <bos> <unk> first, <bos> prepended by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"])
    tok.train_from_iterator([text] * 20, trainer)
    data = json.loads(tok.to_str())
    old = data["model"]["vocab"]
    vocab = {t: i for t, i in old.items() if i < 4}
    for b in BYTE_FALLBACK:
        vocab[b] = len(vocab)
    for t, i in sorted(old.items(), key=lambda kv: kv[1]):
        if i >= 4 and t not in vocab:
            vocab[t] = len(vocab)
    data["model"]["vocab"] = vocab
    for a in data["added_tokens"]:
        a["id"] = vocab[a["content"]]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


TOKENIZERS = {"byte-level": lambda: tiny_tokenizer(TRAIN, vocab_size=400), "byte-fallback": sentencepiece_tokenizer}


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def test_corpus_encodes_identically_and_held_out_falls_back_to_bytes(tokenizer):
    plan = plan_vocab(tokenizer, CORPUS)
    new = plan.tokenizer
    assert len(new) == len(plan.kept) < len(tokenizer)
    for text in CORPUS:
        old = _ids(tokenizer, text)
        assert plan.remap(torch.tensor(old)).tolist() == _ids(new, text)
        assert new.convert_ids_to_tokens(_ids(new, text)) == tokenizer.convert_ids_to_tokens(old)  # same strings
    for text in HELD_OUT:
        assert new.decode(_ids(new, text)) == tokenizer.decode(_ids(tokenizer, text)) == text  # nothing lost
        assert len(_ids(new, text)) > len(_ids(tokenizer, text))  # words outside take more, smaller pieces
    # a held-out word whose tokens are all kept encodes as before, even where the corpus never had it
    for word in ["Modules", " catches", " group", " line"]:
        old = _ids(tokenizer, word)
        assert all(plan.new_id(i) is not None for i in old)
        assert plan.remap(torch.tensor(old)).tolist() == _ids(new, word)


def test_every_kept_word_of_held_out_text_encodes_as_before(tokenizer):
    plan = plan_vocab(tokenizer, CORPUS)
    words = " ".join(HELD_OUT + [TRAIN]).split(" ")
    same = 0
    for w in (" " + w for w in words):
        old = _ids(tokenizer, w)
        if all(plan.new_id(i) is not None for i in old):
            assert plan.remap(torch.tensor(old)).tolist() == _ids(plan.tokenizer, w)
            same += 1
    assert same > 10  # the check above ran on real words


def test_special_tokens_are_kept_and_remapped(tokenizer):
    plan = plan_vocab(tokenizer, CORPUS)
    new = plan.tokenizer
    for name in ("eos_token", "bos_token", "unk_token", "pad_token"):
        tok = getattr(tokenizer, name)
        if tok is not None:
            assert getattr(new, name) == tok
            assert new.convert_tokens_to_ids(tok) == plan.new_id(tokenizer.convert_tokens_to_ids(tok))
    with_special = tokenizer("a line")["input_ids"]
    assert plan.remap(torch.tensor(with_special)).tolist() == new("a line")["input_ids"]  # post-processor's <bos>


def test_without_bytes_unknown_characters_become_unk():
    tok = sentencepiece_tokenizer()
    plan = plan_vocab(tok, CORPUS, keep_bytes=False)
    assert plan.fallback == "unk" and plan.by_bytes == 0
    new = plan.tokenizer
    ids = _ids(new, "zyxw 日本")
    assert new.unk_token_id in ids and not any(t.startswith("<0x") for t in new.convert_ids_to_tokens(ids))
    assert plan.remap(torch.tensor(_ids(tok, CORPUS[0]))).tolist() == _ids(new, CORPUS[0])


def test_byte_level_without_unk_refuses_to_drop_bytes():
    with pytest.raises(ValueError, match="no unknown token"):
        plan_vocab(tiny_tokenizer(TRAIN, vocab_size=400), CORPUS, keep_bytes=False)


@pytest.mark.parametrize("family,tied", [("llama", True), ("llama", False), ("gemma3", True), ("qwen2", False)])
def test_model_rows_follow_and_everything_reloads(family, tied, tmp_path):
    tok = sentencepiece_tokenizer() if family == "gemma3" else tiny_tokenizer(TRAIN, vocab_size=400)
    model = tiny_model(family, vocab_size=len(tok), tie_word_embeddings=tied,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = torch.tensor([_ids(tok, CORPUS[0])])
    with torch.no_grad():
        dense = model(ids).logits
    report = trim_vocab_(model, tok, CORPUS)
    new = report.tokenizer
    kept = plan_vocab(tok, CORPUS).kept
    assert report.vocab_after == len(kept) == model.config.vocab_size == model.get_input_embeddings().num_embeddings
    assert report.params_after < report.params_before and report.tied == tied
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    new_ids = torch.tensor([_ids(new, CORPUS[0])])
    with torch.no_grad():
        trimmed = model(new_ids).logits
    # the kept rows of the same hidden states: each logit a 64-term dot product, taken in another blocking
    torch.testing.assert_close(trimmed, dense[..., kept], **tol(torch.float32, 64 * 4, scale=10.0))
    if tok.eos_token_id is not None:
        assert model.config.eos_token_id == new.eos_token_id
    model.save_pretrained(tmp_path)
    new.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    back_tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in CORPUS + HELD_OUT:
        assert _ids(back_tok, text) == _ids(new, text)
    with torch.no_grad():
        torch.testing.assert_close(back(new_ids).logits, trimmed, rtol=0, atol=1e-6)  # same weights, same kernels


def test_refusals_change_nothing():
    tok = tiny_tokenizer(TRAIN, vocab_size=400)
    model = tiny_model("llama", vocab_size=64)  # smaller than the tokenizer: not its model
    before = model.get_input_embeddings().weight.clone()
    with pytest.raises(ValueError, match="not this model's"):
        trim_vocab_(model, tok, CORPUS)
    assert torch.equal(model.get_input_embeddings().weight, before)
    with pytest.raises(ValueError, match="needs text"):
        plan_vocab(tok, [])
    with pytest.raises(ValueError, match="not in the tokenizer"):
        plan_vocab(tok, CORPUS, keep_tokens=["<nope>"])


def test_keep_tokens_are_kept():
    tok = tiny_tokenizer(TRAIN, vocab_size=400)
    extra = tok.convert_ids_to_tokens(_ids(tok, " Generators"))
    plan = plan_vocab(tok, CORPUS, keep_tokens=extra)
    assert all(plan.new_id(tok.convert_tokens_to_ids(t)) is not None for t in extra)


def test_text_loss_counts_the_same_bytes_for_both_tokenizers():
    tok = tiny_tokenizer(TRAIN, vocab_size=400)
    model = tiny_model("llama", vocab_size=len(tok))
    dense = text_loss(model, tok, HELD_OUT, seqlen=16)
    report = trim_vocab_(model, tok, CORPUS)
    trimmed = text_loss(model, report.tokenizer, HELD_OUT, seqlen=16)
    assert dense["bytes"] == trimmed["bytes"] == sum(len(t.encode()) for t in HELD_OUT)
    assert trimmed["tokens"] > dense["tokens"] > 0 and dense["bits_per_byte"] > 0


def test_a_corpus_that_uses_every_token_says_nothing_was_removed():
    tok = tiny_tokenizer(TRAIN, vocab_size=300)
    model = tiny_model("llama", vocab_size=len(tok))
    report = trim_vocab_(model, tok, [TRAIN * 3])
    assert report.vocab_after == report.vocab_before == 300 and "nothing removed" in str(report)


def _real_tokenizer(alias):
    """The tokenizer of a packaged model: from prunekit's conversion cache when it is there, else converted."""
    from prunekit.models.hf import gguf_cache_folder, load_model, resolve_model_path

    folder = gguf_cache_folder(resolve_model_path(alias))
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    return load_model(alias).tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("alias,kind", [("smollm2-135m", "byte-level"), ("gemma3-270m", "byte-fallback")])
def test_real_tokenizers_encode_pydocs_identically_and_round_trip_held_out_text(alias, kind):
    from prunekit.datasets.text import documents, split_documents
    from prunekit.shrink.vocab import corpus_texts

    tok = _real_tokenizer(alias)
    plan = plan_vocab(tok, corpus_texts("pydocs")[:300])  # check=True: the corpus encodes identically, or it raises
    assert plan.fallback == "bytes" and len(plan.kept) < len(tok) / 2
    held = [d.text for d in split_documents(documents("pydocs"), "evaluation")[:20]]
    new = plan.tokenizer
    old_n = new_n = 0
    for text in held:
        ids = _ids(new, text)
        assert new.decode(ids) == text
        old_n, new_n = old_n + len(_ids(tok, text)), new_n + len(ids)
    assert old_n <= new_n < 1.05 * old_n  # held-out docs of the same kind: a few more tokens, not many


def test_text_loss_refuses_text_with_nothing_to_score():
    tok = tiny_tokenizer(TRAIN, vocab_size=400)
    with pytest.raises(ValueError, match="nothing to score"):
        text_loss(tiny_model("llama", vocab_size=len(tok)), tok, ["a"], seqlen=16)
    with pytest.raises(ValueError, match="seqlen"):
        text_loss(tiny_model("llama", vocab_size=len(tok)), tok, HELD_OUT, seqlen=1)


@pytest.mark.slow
def test_llama_cpp_tokenizes_a_trimmed_gguf_as_the_trimmed_tokenizer(tmp_path):
    """SmolLM2's real tokenizer trimmed to pydocs documents, a small model of that vocabulary written to GGUF with the
    source file's tokenizer fields cut to the kept ids: llama.cpp's own tokenizer must give the trimmed Hugging Face
    tokenizer's ids, on held-out docs and on text far outside the corpus (the byte fallback), or a trimmed model
    would be scored and run on other tokens in llama.cpp than in transformers."""
    import ast
    import subprocess

    from prunekit.datasets.text import documents, split_documents
    from prunekit.export import find_source_gguf
    from prunekit.export.gguf import plan_gguf, write_gguf
    from prunekit.export.llama_cpp import llama_cpp_tool
    from prunekit.shrink.vocab import corpus_texts

    tool = llama_cpp_tool("llama-tokenize")
    if tool is None:
        pytest.skip("llama.cpp is not built (make llama-cpp)")
    tok = _real_tokenizer("smollm2-135m")
    plan = plan_vocab(tok, corpus_texts("pydocs")[:100])
    model = tiny_model("llama", vocab_size=len(plan.kept), hidden=64)
    path = tmp_path / "trimmed.gguf"
    write_gguf(model, plan_gguf(model, plan.tokenizer, "f16", find_source_gguf("smollm2-135m"),
                                plan.kept.tolist()), path)
    held = split_documents(documents("pydocs"), "evaluation")[0].text[:2000]
    for text in (held, "Zürich naïve café 東京 🤖 supercalifragilisticexpialidocious κόσμε\n"):
        (tmp_path / "t.txt").write_text(text)
        out = subprocess.run([str(tool), "-m", str(path), "-f", str(tmp_path / "t.txt"), "--ids", "--log-disable",
                              "--no-bos"], capture_output=True, text=True, timeout=120)
        got = ast.literal_eval(out.stdout.strip().splitlines()[-1])
        assert got == _ids(plan.tokenizer, text)
        assert plan.tokenizer.decode(got) == text
