"""SparseGPT on real SmolLM2-135M layers: does the Hessian's or its inverse's precision, or the way the mask
is chosen, change the reconstruction, on the calibration tokens and on held-out tokens?

Inputs of six layers are recorded from the dense model over 8 calibration windows × 512 tokens (issue 26's
split: every tenth ``.rst.txt`` of the Python docs held out, seed 0) and 4 held-out windows; each layer is
pruned to 50% from H = XᵀX (percdamp 0.01) and the relative output error ‖(W − Ŵ)X‖² / ‖WX‖² is printed:

- ``32/32``: H summed and inverted in float32 (prunekit and llm-compressor); ``32/64``: H in float32, its
  Cholesky inverse in float64; ``64/64``: both in float64;
- ``row``: the mask chosen per row inside each 128-column block instead of over all rows of the block;
  ``bs1024``: the mask chosen over 1024 columns at once.

    python benchmarks/sparsegpt_layers.py      # one thread, about a minute of CPU
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import llm_vs_peers as b  # noqa: E402

from prunekit.methods.sparsegpt import inverse_hessian_factor, sparsegpt_prune  # noqa: E402
from prunekit.models.hf import load_model  # noqa: E402

NAMES = ["model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.15.self_attn.o_proj",
         "model.layers.15.mlp.down_proj", "model.layers.28.mlp.down_proj", "model.layers.28.mlp.gate_proj"]


def record(model, mods, windows):
    acts = {}

    def hook(n):
        def h(m, a):
            acts.setdefault(n, []).append(a[0].detach().reshape(-1, a[0].shape[-1]).clone())
        return h

    hs = [mods[n].register_forward_pre_hook(hook(n)) for n in NAMES]
    with torch.no_grad():
        for w in windows.split(4):
            model(input_ids=w, use_cache=False)
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in acts.items()}


def inverse(h, percdamp, dtype):
    h = h.to(dtype).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=dtype)
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True).float(), dead


def per_row(w, hinv, dead, sparsity, blocksize=128):
    """SparseGPT's loop with the mask of each block chosen row by row (each row loses its share)."""
    w = w.float().contiguous().clone()
    w[:, dead] = 0
    rows, cols = w.shape
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        score = w1.square() / torch.diag(h1).square()
        mask1 = torch.zeros_like(w1, dtype=torch.bool).scatter_(1, score.argsort(dim=1)[:, :round(count * sparsity)], True)
        err1 = torch.zeros_like(w1)
        for i in range(count):
            e = (w1[:, i] * mask1[:, i]) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None]
            err1[:, i] = e
        w[:, i1:i2] = w1.masked_fill(mask1, 0)
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, ~pruned


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    mods = dict(model.named_modules())
    calib_docs, eval_docs = b.tenth_split()
    cal = record(model, mods, b.windows_of(tok, calib_docs, 8, 512, seed=0))
    held = record(model, mods, b.windows_of(tok, eval_docs, 4, 512))
    for n in NAMES:
        w, x, xh = mods[n].weight.detach().float(), cal[n], held[n]
        h32, h64 = x.t() @ x, x.double().t() @ x.double()
        damped = h64 + 0.01 * torch.diag(h64).mean() * torch.eye(h64.shape[0], dtype=torch.float64)
        ev = torch.linalg.eigvalsh(damped)
        hinv, dead = inverse_hessian_factor(h32, 0.01)
        variants = {
            "32/32": lambda: sparsegpt_prune(w, *inverse(h32, 0.01, torch.float32), 0.5),
            "32/64": lambda: sparsegpt_prune(w, *inverse(h32, 0.01, torch.float64), 0.5),
            "64/64": lambda: sparsegpt_prune(w, *inverse(h64, 0.01, torch.float64), 0.5),
            "row": lambda: per_row(w, hinv, dead, 0.5),
            "bs1024": lambda: sparsegpt_prune(w, hinv, dead, 0.5, blocksize=1024),
        }
        out = []
        for label, run in variants.items():
            nw, _ = run()
            err = lambda z: float(((z @ (w - nw).t()) ** 2).sum() / (z @ w.t()).square().sum())  # noqa: E731
            out.append(f"{label} {err(x):.5f}/{err(xh):.5f}")
        print(f"{n.replace('model.layers.', '')}: cond {float(ev[-1] / ev[0]):.2e}  (calibration/held-out) "
              + " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
