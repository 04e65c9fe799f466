"""Token pruning against a hand-written reference: the kept tokens are the top-k of the ranking
(not its bottom), and the pruned forward is exactly the unpatched blocks run on the kept tokens."""

import pytest
import torch

import prunekit.tokens as pt

from .conftest import run, timm_vit

from tests.tolerances import tol


def _reference(model, x, layer, keep, score):
    """Blocks run by hand; after ``layer``'s attention the ``keep`` share of the patch tokens with the
    highest ``score(q, k)`` (or, for score=None, the lowest: the inverted ranking) stays, then its MLP."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for i, blk in enumerate(model.blocks):
            if i != layer:
                h = blk(h)
                continue
            y = blk.norm1(h)
            a = blk.attn
            b, n, c = y.shape
            qkv = a.qkv(y).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
            q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
            imp = score(q, k, a.scale)
            h = h + blk.ls1(a(y))
            n_keep = round(keep * (n - 1))
            idx = imp[:, 1:].argsort(dim=-1, descending=True, stable=True)[:, :n_keep].sort(dim=-1).values + 1
            idx = torch.cat([torch.zeros(b, 1, dtype=torch.long), idx], dim=1)
            h = h.gather(1, idx.unsqueeze(-1).expand(-1, -1, c))
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
        return model.forward_head(model.norm(h))


def _cls(q, k, scale):
    return ((q[:, :, :1] @ k.transpose(-1, -2)) * scale).softmax(-1).mean(1)[:, 0]


def _mean(q, k, scale):
    return ((q @ k.transpose(-1, -2)) * scale).softmax(-1).mean(1).mean(1)


@pytest.mark.parametrize("method, score", [("cls-attention", _cls), ("mean-attention", _mean)])
def test_pruning_keeps_the_most_attended_tokens_exactly(method, score):
    torch.manual_seed(0)
    model = timm_vit()
    x = torch.randn(3, 3, 32, 32)
    pt.prune_(model, keep=0.5, method=method, layers=[1])
    got = run(model, x)
    pt.unpatch_(model)
    want = _reference(model, x, 1, 0.5, score)
    # the patched forward drops tokens, the reference masks them: the same terms in other kernels; 4 layers of
    # q/k/v (48), scores (head 16), values (65 tokens), proj (48), MLP (48 + 192), then the head (48)
    torch.testing.assert_close(got, want, **tol(torch.float32, k=4 * (48 + 16 + 65 + 48 + 48 + 192) + 48))
    inverted = _reference(model, x, 1, 0.5, lambda q, k, s: -score(q, k, s))
    assert not torch.allclose(got, inverted, atol=1e-3)  # the opposite ranking gives another result
