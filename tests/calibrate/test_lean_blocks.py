import copy

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.calibrate.onepass as onepass
from prunekit.calibrate import lean_blocks as lean_module
from prunekit.calibrate.lean_blocks import (is_llama_style_attention, is_llama_style_layer, is_llama_style_mlp,
                                          is_llama_style_norm, lean_blocks)
from prunekit.models.hf import tiny_model

IDS = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))


class _OtherOrder(nn.Module):
    """The same parts as LlamaMLP, another computation: must keep its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


def _layer_call(model, layer, x):
    cos_sin = model.model.rotary_emb(x, torch.arange(x.shape[1])[None])
    return layer(x, position_embeddings=cos_sin)


# (MLPs, layers, norms, attentions) made lean in one decoder layer: Gemma's norm (1 + weight) and Qwen2's and
# Mistral's attention (their own code) are not Llama's
LEAN_PARTS = {"llama": (1, 1, 2, 1), "qwen2": (1, 1, 2, 0), "mistral": (1, 1, 2, 0), "gemma": (1, 1, 0, 1)}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_llama_style_blocks_are_recognised_and_give_the_same_numbers(family):
    model = tiny_model(family, hidden=64, layers=1)
    layer = model.model.layers[0]
    assert is_llama_style_layer(layer) and is_llama_style_mlp(layer.mlp)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want = _layer_call(model, layer, x.clone())
        with lean_blocks(layer) as touched:
            assert touched == LEAN_PARTS[family] and "forward" in vars(layer.mlp)
            given = x.clone()
            got = _layer_call(model, layer, given)
    assert torch.equal(got, want)  # the same operations on the same values
    assert given.numel() == 0  # the layer's input was freed once dead
    assert "forward" not in vars(layer.mlp) and not layer._forward_pre_hooks
    assert not layer.post_attention_layernorm._forward_pre_hooks
    assert all("forward" not in vars(m) for m in layer.modules())


class _Fresh(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the fresh tensors of ``shape`` an operation makes (not written into one of its arguments)."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.shape, self.made = tuple(shape), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                 if isinstance(a, torch.Tensor)}
        if isinstance(out, torch.Tensor) and tuple(out.shape) == self.shape and out.numel() and \
                out.untyped_storage().data_ptr() not in given:
            self.made.append(func.__name__)
        return out


def test_the_residual_sums_are_written_into_the_outputs_they_add():
    model = tiny_model("llama", hidden=64, layers=1)
    layer = model.model.layers[0]
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        with _Fresh(x.shape) as plain:
            want = _layer_call(model, layer, x.clone())
        with lean_blocks(layer), _Fresh(x.shape) as lean:
            got = _layer_call(model, layer, x.clone())
    assert torch.equal(got, want)
    assert plain.made.count("add.Tensor") == 2 and "add.Tensor" not in lean.made  # both sums in place
    # the input's copy and one square per norm are all that is left (the norms' two other tensors each in place)
    assert lean.made == ["clone.default", "pow.Tensor_Scalar", "pow.Tensor_Scalar"] and len(plain.made) == 9


def test_an_output_a_hook_sees_is_not_summed_into():
    model = tiny_model("llama", hidden=64, layers=1)
    layer = model.model.layers[0]
    seen = {}
    for name in ("o_proj", "down_proj"):
        part = getattr(layer.self_attn if name == "o_proj" else layer.mlp, name)
        part.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, (out, out.clone())))
    x = torch.randn(2, 4, 64)
    with torch.no_grad():
        want = _layer_call(model, layer, x.clone())
        with lean_blocks(layer):
            got = _layer_call(model, layer, x.clone())
    assert torch.equal(got, want)
    for name, (kept, copy_) in seen.items():  # what the hooks kept is still the projection's output
        assert torch.equal(kept, copy_), name


def test_the_mlp_input_is_freed_only_inside_a_llama_style_layer():
    mlp = tiny_model("llama", hidden=64, layers=1).model.layers[0].mlp
    x = torch.randn(2, 3, 64)
    with torch.no_grad(), lean_blocks(mlp) as touched:
        mlp(x)
    assert touched == (1, 0, 0, 0) and x.numel() == 6 * 64  # a lone MLP: who reads x next is unknown, so it stays


def test_other_modules_keep_their_forward_and_tensors():
    other = _OtherOrder()
    assert not is_llama_style_mlp(other)
    gpt2 = tiny_model("gpt2", hidden=64, layers=1)
    with lean_blocks(gpt2) as n, lean_blocks(other) as m:
        assert n == (0, 0, 0, 0) and m == (0, 0, 0, 0)


def test_with_gradients_the_class_forward_runs_and_nothing_is_freed():
    model = tiny_model("llama", hidden=64, layers=1)
    layer = model.model.layers[0]
    x = torch.randn(2, 3, 64, requires_grad=True)
    with lean_blocks(layer):
        _layer_call(model, layer, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.numel() == 6 * 64


def test_everything_is_restored_after_an_error():
    model = tiny_model("llama", hidden=64, layers=2)
    with pytest.raises(RuntimeError, match="boom"):
        with lean_blocks(model):
            raise RuntimeError("boom")
    for layer in model.model.layers:
        assert "forward" not in vars(layer.mlp) and not layer._forward_pre_hooks
        assert not layer.post_attention_layernorm._forward_pre_hooks
        assert all("forward" not in vars(m) for m in layer.modules())


@pytest.mark.parametrize("family", ["llama", "gemma", "mistral", "qwen3", "phi3"])
def test_one_pass_sparsegpt_gives_the_same_weights_with_and_without_it(monkeypatch, family):
    base = tiny_model(family, hidden=64, layers=2)
    lean, plain = copy.deepcopy(base), copy.deepcopy(base)
    pk.prune_(lean, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=4, progress=False)
    used = []

    def none(block):
        used.append(block)
        return lean_blocks(nn.Module())  # touches nothing

    monkeypatch.setattr(onepass, "lean_blocks", none)
    pk.prune_(plain, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=4, progress=False)
    assert len(used) == 2
    for (name, a), (_, b) in zip(pk.masked_modules(lean), pk.masked_modules(plain)):
        assert torch.equal(a.weight, b.weight), name



class _KeepsItsOutput(nn.Module):
    """A projection that keeps its product and returns a view of it (as a fused or caching kernel may)."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner, self.kept = inner, None

    def forward(self, x):
        self.kept = self.inner(x)
        return self.kept[..., :]


def test_views_of_a_kept_product_are_not_changed_in_place():
    model = tiny_model("llama", hidden=64, layers=1)
    mlp = model.model.layers[0].mlp
    mlp.gate_proj, mlp.up_proj = _KeepsItsOutput(mlp.gate_proj), _KeepsItsOutput(mlp.up_proj)
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        want = mlp(x)
        with lean_blocks(model) as touched:
            got = mlp(x)
        assert torch.equal(mlp.gate_proj.kept, mlp.gate_proj.inner(x))  # the kept product is untouched
        assert torch.equal(mlp.up_proj.kept, mlp.up_proj.inner(x))
    assert touched[0] == 1 and torch.equal(got, want)


def test_a_norm_in_place_gives_transformers_numbers_with_one_fresh_tensor():
    layer = tiny_model("llama", hidden=64, layers=1).model.layers[0]
    norm = layer.input_layernorm
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64) + 0.5)
    assert is_llama_style_norm(norm)
    x = torch.randn(4, 7, 64) * 3
    with torch.no_grad():
        want = norm(x)
        made = []

        class Count(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                given = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                         if isinstance(a, torch.Tensor)}
                if isinstance(out, torch.Tensor) and out.shape == x.shape and \
                        out.untyped_storage().data_ptr() not in given:  # a fresh tensor of the input's size
                    made.append(func.__name__)
                return out

        with lean_blocks(layer), Count():
            got = norm(x)
    assert torch.equal(got, want) and made == ["pow.Tensor_Scalar"]  # the square's buffer takes the rest
    with torch.no_grad(), lean_blocks(layer):  # bfloat16: transformers' own forward
        assert torch.equal(norm(x.bfloat16()), type(norm).forward(norm, x.bfloat16()))


@pytest.mark.parametrize("head_dim", [16, 15])
def test_the_rotary_embedding_in_place_is_transformers_bit_for_bit(head_dim):
    from transformers.models.llama import modeling_llama

    q = torch.randn(2, 5, 3, head_dim).transpose(1, 2)  # a projection's output as the attention sees it
    cos, sin = torch.randn(2, 5, head_dim), torch.randn(2, 5, head_dim)
    want, _ = modeling_llama.apply_rotary_pos_emb(q, q, cos, sin)
    got = lean_module._rotated(q, cos.unsqueeze(1), sin.unsqueeze(1))
    assert torch.equal(got, want)


def test_attention_falls_back_to_its_own_forward_with_a_cache_or_gradients():
    from transformers import DynamicCache

    model = tiny_model("llama", hidden=64, layers=1)
    attn = model.model.layers[0].self_attn
    assert is_llama_style_attention(attn)
    x = torch.randn(2, 5, 64)
    pos = model.model.rotary_emb(x, torch.arange(5)[None])
    with torch.no_grad():
        want = attn(x, position_embeddings=pos)[0]
        with lean_blocks(model) as touched:
            assert touched[3] == 1
            assert torch.equal(attn(x, position_embeddings=pos)[0], want)
            cache = DynamicCache(config=model.config)
            assert torch.equal(attn(x, position_embeddings=pos, cache=cache)[0], want)
            assert cache.get_seq_length() == 5  # the cache was filled: transformers' own forward ran
            half = tuple(t.bfloat16() for t in pos)  # rotary tables in another dtype: transformers' forward
            assert torch.equal(attn(x, position_embeddings=half)[0], type(attn).forward(attn, x, half)[0])
    with lean_blocks(model):
        out = attn(x.requires_grad_(), position_embeddings=pos)[0]
    assert out.requires_grad and torch.allclose(out.detach(), want)


def test_an_attention_whose_rotary_is_not_llamas_keeps_its_forward(monkeypatch):
    from transformers.models.llama import modeling_llama

    attn = tiny_model("llama", hidden=64, layers=1).model.layers[0].self_attn
    assert is_llama_style_attention(attn)

    def other_rotary(q, k, cos, sin, unsqueeze_dim=1):  # e.g. an interleaved or partial rotary
        return q * cos.unsqueeze(unsqueeze_dim), k * cos.unsqueeze(unsqueeze_dim)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", other_rotary)
    assert not is_llama_style_attention(attn)
