"""Slow: structured pruning of the real SmolLM2-135M (Llama, GQA 9/3) and all-MiniLM-L6-v2 (BERT)."""

from pathlib import Path

import pytest
import torch

import prunekit.structured as ps

pytestmark = pytest.mark.slow

DOCS = Path("/usr/share/doc/python3.11/html/_sources/tutorial")


def _text() -> str:
    files = sorted(DOCS.glob("*.rst.txt"))
    if not files:
        pytest.skip("python3.11-doc is not installed")
    return files[0].read_text()[:4000]


def _smollm():
    transformers = pytest.importorskip("transformers")
    from prunekit.models.packaged import packaged_model_path

    try:
        path = packaged_model_path("smollm2-135m")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    gguf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain model, so that save_pretrained works
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict(), strict=False)
    model.tie_weights()
    return tok, model.eval()


def _loss(model, ids) -> float:
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def test_smollm2_heads_neurons_blocks_shrink_and_reload(tmp_path):
    import copy

    import transformers

    tok, model = _smollm()
    files = sorted(DOCS.glob("*.rst.txt"))
    ids = tok(_text(), return_tensors="pt").input_ids[:, :128]  # evaluation text
    cal = tok(files[1].read_text()[:3000], return_tensors="pt").input_ids[:, :128]  # another file: calibration
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    base_params = sum(p.numel() for p in model.parameters())
    base_loss = _loss(model, ids)  # measured here: 3.02
    magnitude = copy.deepcopy(model)
    ps.prune_neurons_(magnitude, 0.25, importance="l2")
    rep = ps.prune_transformer_(model, "heads", 1 / 3, calibration=cal)
    assert rep.heads_after == 6 and rep.kv_heads_after == 2 and rep.importance == "activation" and rep.reloadable
    heads_loss = _loss(model, ids)  # measured here: 4.15 (weight-magnitude heads: 6.40)
    rep = ps.prune_transformer_(model, "neurons", 0.25, calibration=cal)
    assert rep.intermediate_size == 1152
    rep = ps.prune_transformer_(model, "layers", 0.1, calibration=cal)
    assert rep.blocks_after == 27
    assert sum(p.numel() for p in model.parameters()) < 0.8 * base_params
    loss = _loss(model, ids)
    assert base_loss < heads_loss < 5 and loss < 8
    # activation-aware neuron ranking beats weight magnitude by far on a pretrained LLM (3.7 vs 13.6 here)
    single = copy.deepcopy(_smollm()[1])
    ps.prune_neurons_(single, 0.25, importance="activation", calibration=cal)
    assert _loss(single, ids) + 3 < _loss(magnitude, ids)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 27 and loaded.config.head_dim == 64
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_minilm_neurons_and_blocks_keep_embeddings_close(tmp_path):
    import transformers
    from prunekit.models.packaged import packaged_model_path

    try:
        folder = packaged_model_path("minilm-l6")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tok(["Structured pruning removes whole neurons.", "The cat sat on the mat."], return_tensors="pt",
                padding=True)

    def embed(m):
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    before = embed(model)
    assert ps.prune_neurons_(model, 0.25).intermediate_size == 1152
    removed = ps.prune_layers_(model, dict(batch), n=1).removed
    assert len(removed) == 1 and model.config.num_hidden_layers == 5
    after = embed(model)
    assert float((before * after).sum(-1).min()) > 0.5  # the sentence embeddings stay close
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(embed(loaded), after, rtol=0, atol=1e-5)
