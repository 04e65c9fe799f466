"""The one MAC counter against counts worked out by hand: a Linear, grouped convolutions, attention
blocks (fused, eager, nn.MultiheadAttention), and the summary that reads it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.metrics.macs import count_macs, macs_by_module
from prunekit.models.tiny import tiny_model


def test_linear_counts_tokens_times_in_times_out_and_no_bias():
    lin = nn.Linear(16, 8)
    assert count_macs(lin, torch.zeros(3, 5, 16)) == 3 * 5 * 16 * 8
    twice = nn.Sequential(lin, nn.ReLU(), nn.Linear(8, 8), nn.GELU())  # activations count 0
    assert count_macs(twice, torch.zeros(4, 16)) == 4 * (16 * 8 + 8 * 8)


def test_grouped_depthwise_and_transposed_convolutions():
    x = torch.zeros(2, 8, 10, 10)
    grouped = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)  # output 2×12×5×5, each sees 8/4 inputs × 3×3
    assert count_macs(grouped, x) == (2 * 12 * 5 * 5) * (2 * 3 * 3)
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(depthwise, x) == (2 * 8 * 10 * 10) * (1 * 3 * 3)
    up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)  # each input element writes 6/2 outputs × 2×2
    assert count_macs(up, x) == (2 * 8 * 10 * 10) * (3 * 2 * 2)
    conv1d = nn.Conv1d(4, 6, 5, groups=2)
    assert count_macs(conv1d, torch.zeros(1, 4, 20)) == (6 * 16) * (2 * 5)


class Attention(nn.Module):
    """A ViT-style attention block: fused q/k/v projection, heads, scores and values, output projection."""

    def __init__(self, dim: int = 32, heads: int = 4, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "eager"])
def test_attention_block_counts_projections_scores_and_values(fused):
    b, n, dim, heads = 2, 7, 32, 4
    block = Attention(dim, heads, fused)
    x = torch.randn(b, n, dim)
    projections = b * n * dim * 3 * dim + b * n * dim * dim
    products = 2 * b * heads * n * n * (dim // heads)  # q·kᵀ (n×n per head, over head_dim) and scores·v
    assert count_macs(block, x) == projections + products
    per = macs_by_module(block, x)  # the products land on the block itself, the projections on their Linears
    assert per.modules == {"qkv": b * n * dim * 3 * dim, "proj": b * n * dim * dim, "": products}
    assert per.total == projections + products
    assert sum(per.ops.values()) == per.total


def test_multihead_attention_module_and_cross_attention():
    e, heads, n, s, b = 32, 4, 7, 5, 2
    mha = nn.MultiheadAttention(e, heads, batch_first=True)
    q, kv = torch.randn(b, n, e), torch.randn(b, s, e)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, q, kv):
            return self.attn(q, kv, kv, need_weights=False)[0]

    want = b * n * e * e + 2 * b * s * e * e + b * n * e * e + 2 * b * n * s * e  # q, k, v in; out; scores, values
    assert count_macs(Cross(), (q, kv)) == want


def test_matrix_products_einsum_and_gpt2_conv1d():
    a, w = torch.randn(3, 4, 5), torch.randn(3, 5, 6)

    class Products(nn.Module):
        def forward(self, a):
            x = torch.bmm(a, w)                                   # 3·4·5·6
            x = torch.baddbmm(x, a, w)                            # 3·4·5·6
            x = torch.einsum("bij,bjk->bik", a, w) + x            # 3·4·5·6
            x = torch.einsum("...ij,...jk->...ik", a, w) + x      # 3·4·5·6
            x = x + torch.addbmm(torch.zeros(4, 6), a, w)         # 3·4·5·6, summed over the batch
            return x.exp().sum()                                  # elementwise and a sum: 0

    assert count_macs(Products(), a) == 5 * 3 * 4 * 5 * 6
    from transformers.pytorch_utils import Conv1D
    assert count_macs(Conv1D(8, 16), torch.zeros(2, 3, 16)) == 2 * 3 * 16 * 8  # addmm


def test_a_tiny_llama_counts_its_attention_once_whichever_kernel():
    m = tiny_model("llama")  # hidden 64, 4 heads of 16, 2 key/value heads, MLP 128, 2 layers, vocab 128
    c = m.config
    b, n = 2, 10
    ids = {"input_ids": torch.randint(0, 128, (b, n))}
    linears = b * n * (2 * c.hidden_size * c.hidden_size                  # q, o
                       + 2 * c.hidden_size * c.num_key_value_heads * c.head_dim  # k, v
                       + 3 * c.hidden_size * c.intermediate_size) * c.num_hidden_layers + b * n * c.hidden_size * 128
    attention = 2 * b * c.num_attention_heads * n * n * c.head_dim * c.num_hidden_layers
    for impl in ("sdpa", "eager"):
        m.config._attn_implementation = impl
        per = macs_by_module(m, ids)
        assert per.total == linears + attention, impl
        assert per.modules["model.layers.1.self_attn"] == attention // c.num_hidden_layers
        assert per.modules["lm_head"] == b * n * c.hidden_size * 128


def test_the_summary_reads_the_same_counter_and_keeps_attention_dense():
    b, n, dim, heads = 2, 7, 32, 4
    block = nn.Sequential(Attention(dim, heads), nn.Linear(dim, 10))
    x = torch.randn(b, n, dim)
    s = pk.summary(block, example_inputs=x)
    products = 2 * b * heads * n * n * (dim // heads)
    assert s.macs == count_macs(block, x) == b * n * (3 * dim * dim + dim * dim + dim * 10) + products
    rows = {r.name: r for r in s.layers}
    assert rows["0"].macs == products and rows["0"].params == 0
    pk.prune_(block, "magnitude", 0.5)  # qkv and proj lose half their weights; the head stays dense
    s = pk.summary(block, example_inputs=x)
    assert s.effective_macs == b * n * (3 * dim * dim + dim * dim) // 2 + b * n * dim * 10 + products


def test_a_torch_encoder_layer_in_eval_is_counted_whole():
    # in eval without grad torch may take a fused fast path; the counter sees the attention and both MLP layers
    b, n, e, f = 2, 7, 32, 64
    layer = nn.TransformerEncoderLayer(e, 4, f, batch_first=True).eval()
    assert count_macs(layer, torch.randn(b, n, e)) == 4 * b * n * e * e + 2 * b * n * n * e + 2 * b * n * e * f


def test_counting_leaves_each_module_in_its_own_mode_and_no_hooks_behind():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[1].eval()  # a frozen norm inside a model being trained
    macs_by_module(model, torch.randn(3, 4))
    assert [m.training for m in model] == [True, False, True] and model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
