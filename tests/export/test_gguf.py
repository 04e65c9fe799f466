import pytest
import torch

from prunekit.export import check_file_target, export
from prunekit.export.gguf import parse_quant, plan_gguf, read_gguf_hparams, tensor_types

from .conftest import logits, make_llama, pruned


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("quant, atol", [("f32", 0.0), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_gguf_round_trips_through_transformers(tokenizer, tmp_path, quant, atol):
    model = pruned(make_llama(len(tokenizer)))
    path = tmp_path / f"m-{quant}.gguf"
    report = export(model, tokenizer, path, to="gguf", quant=quant)
    assert report.bytes == path.stat().st_size and report.detail["quant"] == quant
    back, tok = _load(path)
    ids = torch.randint(0, len(tokenizer), (2, 16))
    diff = (logits(back, ids) - logits(model, ids)).abs().max().item()
    assert diff <= atol
    assert back.config.tie_word_embeddings
    text = "def f(x): return x"
    assert tok(text).input_ids == tokenizer(text).input_ids
    types = set(tensor_types(path).values())
    assert types == ({"F32"} if quant == "f32" else {"F32", quant.upper()})


def test_sizes_follow_the_type(tokenizer, tmp_path):
    model = make_llama(len(tokenizer))
    sizes = {q: export(model, tokenizer, tmp_path / f"{q}.gguf", to="gguf", quant=q).bytes
             for q in ("f32", "f16", "q8_0", "q4_1")}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_1"]


@pytest.mark.parametrize("what, field, value", [("heads", "attention.head_count", 2), ("neurons", "feed_forward_length", 64)])
def test_structured_pruning_changes_the_gguf_metadata(tokenizer, tmp_path, what, field, value):
    from prunekit.structured import prune_transformer_

    model = make_llama(len(tokenizer))
    prune_transformer_(model, what=what, sparsity=0.5)
    path = tmp_path / f"{what}.gguf"
    export(model, tokenizer, path, to="gguf", quant="f32")
    hp = read_gguf_hparams(path)
    assert hp[field] == value and hp["attention.key_length"] == 16 and hp["embedding_length"] == 64
    back, _ = _load(path)
    ids = torch.randint(0, len(tokenizer), (1, 12))
    assert torch.allclose(logits(back, ids), logits(model, ids), atol=1e-5)


def test_what_gguf_cannot_hold_is_refused_before_writing(tokenizer, tmp_path):
    from prunekit.models.hf import tiny_model

    with pytest.raises(ValueError, match="GGUF export supports llama, mistral, gemma3_text"):
        export(tiny_model("gpt2", vocab_size=len(tokenizer)), tokenizer, tmp_path / "g.gguf", to="gguf")
    with pytest.raises(ValueError, match="biases"):
        export(make_llama(len(tokenizer), attention_bias=True), tokenizer, tmp_path / "b.gguf", to="gguf")
    with pytest.raises(ValueError, match="cannot be written here.*K-quants .* llama-quantize"):
        export(make_llama(len(tokenizer)), tokenizer, tmp_path / "k.gguf", to="gguf", quant="iq2_xxs")
    with pytest.raises(ValueError, match="needs the GGUF file the model came from"):
        export(make_llama(len(tokenizer)), tokenizer, tmp_path / "s.gguf", to="gguf", quant="source")
    with pytest.raises(ValueError, match="unknown GGUF type"):
        parse_quant("q9")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file_and_the_old_one_stays(tokenizer, tmp_path, monkeypatch):
    import prunekit.export.gguf as g

    model = make_llama(len(tokenizer))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        export(model, tokenizer, path, to="gguf")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(g.gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(model, tokenizer, path, to="gguf", overwrite=True)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_file_targets_are_checked(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        check_file_target(tmp_path)
    with pytest.raises(ValueError, match="does not end in .gguf"):
        check_file_target(tmp_path / "m.bin")
    with pytest.raises(ValueError, match="does not exist; create it first"):
        check_file_target(tmp_path / "no" / "m.gguf")


def test_a_source_gguf_gives_its_tokenizer_and_its_tensor_types(tokenizer, tmp_path):
    model = make_llama(len(tokenizer))
    source = tmp_path / "source.gguf"
    export(model, tokenizer, source, to="gguf", quant="q4_1")
    shrunk = pruned(make_llama(len(tokenizer), seed=1))
    out = tmp_path / "out.gguf"
    report = export(shrunk, None, out, to="gguf", quant="source", source=source)
    assert report.detail["tokenizer"] == "copied from source.gguf"
    assert tensor_types(out) == tensor_types(source)
    back, tok = _load(out)
    assert tok("a package").input_ids == tokenizer("a package").input_ids


def test_a_vocabulary_smaller_than_the_embedding_is_padded(tokenizer, tmp_path):
    model = make_llama(len(tokenizer) + 20)
    plan = plan_gguf(model, tokenizer, "f16")
    assert any("padded" in n for n in plan.notes) and plan.vocab.tokens == len(tokenizer) + 20
    with pytest.raises(ValueError, match="only"):
        plan_gguf(make_llama(len(tokenizer) - 10), tokenizer, "f16")


def test_zeros_stay_exact_in_symmetric_types_and_a_note_warns_of_offset_ones(tokenizer, tmp_path):
    import gguf

    model = pruned(make_llama(len(tokenizer)))
    assert not any("zeros come back" in n for n in plan_gguf(model, tokenizer, "q4_0").notes)
    assert any("Q4_1 stores each block" in n for n in plan_gguf(model, tokenizer, "q4_1").notes)
    path = tmp_path / "m.gguf"
    export(model, tokenizer, path, to="gguf", quant="q4_0")
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.0.ffn_up.weight")
    w = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(int(t.tensor_type)))
    assert ((w == 0).mean()) == pytest.approx(0.5, abs=0.01)


def test_subset_vocab_cuts_the_source_tokenizer_to_the_kept_ids():
    import gguf

    from prunekit.export.gguf_vocab import VocabPlan, subset_vocab

    T = gguf.GGUFValueType
    tokens = [b"<s>", b"a", b"b", b"ab", b"c", b"abc", b"bc"]
    plan = VocabPlan("copied", len(tokens), fields=[
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", [3, 1, 1, 1, 1, 1, 1], T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", [b"a b", b"ab c", b"b c"], T.ARRAY, T.STRING),
        ("tokenizer.ggml.bos_token_id", 0, T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 6, T.UINT32, None),
    ])
    cut = subset_vocab(plan, [0, 1, 2, 3, 4, 5])  # "bc" (6) goes
    got = {k: v for k, v, *_ in cut.fields}
    assert cut.tokens == 6 and got["tokenizer.ggml.tokens"] == tokens[:6]
    assert got["tokenizer.ggml.token_type"] == [3, 1, 1, 1, 1, 1]
    assert got["tokenizer.ggml.merges"] == [b"a b", b"ab c"]  # "b c" builds a token no longer kept
    assert got["tokenizer.ggml.bos_token_id"] == 0 and "tokenizer.ggml.eos_token_id" not in got
    assert any("eos_token_id" in n for n in cut.notes)
    with pytest.raises(ValueError, match="ascending"):
        subset_vocab(plan, [3, 1])
