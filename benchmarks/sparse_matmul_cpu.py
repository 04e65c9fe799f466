"""Does any CPU path turn 50% unstructured or 2:4 sparsity into a faster matmul at SmolLM2-135M's layer
sizes? Measured, not assumed.

For each Linear shape of SmolLM2-135M (q/o 576×576, k/v 192×576, gate/up 1536×576, down 576×1536) and
each token count (1 = one decoding step, 128 and 512 = prefill), every path computes ``x @ Wᵀ`` for the
same pruned ``W``; the result is checked against the dense product, and the median time is compared
with the dense float32 product (``ratio`` > 1 is faster). The paths are timed interleaved, round after
round, in one process, so a busy machine slows them alike; CPU time is reported beside wall time.

Paths: dense float32 and bfloat16 (``F.linear``); ``torch.sparse`` CSR and BSR (16×16 blocks) through
``torch.sparse.mm`` (COO was 10-100× slower than dense in a first run and is left out); scipy's CSR; PyTorch's semi-structured 2:4 (``to_sparse_semi_structured``,
CUDA only: recorded as unavailable); and, for comparison, the dense product of a *structurally* pruned
layer with half its output rows removed (what ``prunekit prune --structured neurons`` produces).

    python benchmarks/sparse_matmul_cpu.py --threads 1 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from typing import Callable

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import numpy as np
import torch
import torch.nn.functional as F

from prunekit.infra.latency import time_interleaved

SHAPES = {"q_proj/o_proj 576×576": (576, 576), "k_proj/v_proj 192×576": (192, 576),
          "gate/up 1536×576": (1536, 576), "down 576×1536": (576, 1536)}


def prune(w: torch.Tensor, pattern: str, seed: int) -> torch.Tensor:
    """Half the entries of ``w`` zeroed: the smallest half of each row (unstructured) or 2 of every 4."""
    if pattern == "2:4":
        groups = w.reshape(w.shape[0], -1, 4)
        keep = groups.abs().topk(2, dim=-1).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
        return (groups * mask).reshape(w.shape)
    g = torch.Generator().manual_seed(seed)
    scores = w.abs() + 1e-6 * torch.rand(w.shape, generator=g)
    k = w.shape[1] // 2
    thresh = scores.kthvalue(k, dim=1, keepdim=True).values
    return torch.where(scores > thresh, w, torch.zeros_like(w))


def paths(w: torch.Tensor, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor] | str]:
    """name → a function computing x @ wᵀ (float32 result), or a string saying why the path is unavailable."""
    import scipy.sparse as sp

    wt = w.t().contiguous()
    out: dict[str, Callable[[], torch.Tensor] | str] = {}
    out["dense fp32"] = lambda: F.linear(x, w)
    wb, xb = w.to(torch.bfloat16), x.to(torch.bfloat16)
    out["dense bf16"] = lambda: F.linear(xb, wb)
    csr = w.to_sparse_csr()
    out["torch CSR"] = lambda: torch.sparse.mm(csr, x.t()).t()
    if w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0:
        bsr = w.to_sparse_bsr((16, 16))
        out["torch BSR 16×16"] = lambda: torch.sparse.mm(bsr, x.t()).t()
    scsr = sp.csr_matrix(w.numpy())
    xn = x.numpy()
    out["scipy CSR"] = lambda: torch.from_numpy(np.asarray(scsr @ xn.T).T)
    try:
        from torch.sparse import to_sparse_semi_structured

        semi = to_sparse_semi_structured(w.half())
        out["torch semi-structured 2:4"] = lambda: F.linear(x.half(), semi).float()
    except Exception as exc:  # CPU tensors are refused
        out["torch semi-structured 2:4"] = f"unavailable: {str(exc).splitlines()[0][:80]}"
    del wt
    return out


def bench(shape: tuple[int, int], tokens: int, pattern: str, rounds: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    w = prune(torch.randn(shape, generator=g), pattern, seed)
    x = torch.randn(tokens, shape[1], generator=g)
    ref = F.linear(x, w)
    fns = paths(w, x)
    half = w[: shape[0] // 2].contiguous()
    fns["structured: half the rows, dense"] = lambda: F.linear(x, half)
    rows = []
    live = {k: f for k, f in fns.items() if callable(f)}
    for name, f in live.items():  # warm-up and correctness
        y = f().float()
        target = ref[:, : shape[0] // 2] if name.startswith("structured") else ref
        tol = 5e-2 if ("bf16" in name or "semi" in name) else 1e-3
        if not torch.allclose(y, target, atol=tol * float(target.abs().max()), rtol=0):
            raise RuntimeError(f"{name} computed a different product")
    inner = max(1, int(2e7 // (tokens * shape[0] * shape[1])))  # ≥ ~20 MFLOP-pairs per timing

    def repeated(f):
        def run() -> None:
            for _ in range(inner):
                f()
        return run

    # prunekit's one timing routine: every path timed in turn in each round, with spread and a noisy flag
    cmp = time_interleaved({k: repeated(f) for k, f in live.items()}, warmup=1, min_rounds=min(5, rounds),
                           max_rounds=rounds, budget_s=30.0, threads=None)
    base = cmp.timings["dense fp32"]
    for name, f in fns.items():
        if not callable(f):
            rows.append({"path": name, "note": f})
            continue
        t = cmp.timings[name]
        r = cmp.ratio("dense fp32", name)  # paired: dense time / path time, per round
        rows.append({"path": name, "wall_us": t.median_ms * 1e3 / inner, "cpu_us": t.cpu_median_ms * 1e3 / inner,
                     "ratio_wall": r.median, "ratio_iqr": r.iqr,
                     "ratio_cpu": base.cpu_median_ms / t.cpu_median_ms if t.cpu_median_ms > 0 else float("nan"),
                     "noisy": t.noisy, "why": ", ".join(t.reasons())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--tokens", default="1,128,512")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds, seed {args.seed}; "
          f"ratio = dense fp32 time / path time (> 1 is faster)\n")
    for pattern in args.patterns.split(","):
        for label, shape in SHAPES.items():
            for tokens in [int(t) for t in args.tokens.split(",")]:
                rows = bench(shape, tokens, pattern, args.rounds, args.seed)
                results.append({"pattern": pattern, "layer": label, "tokens": tokens, "rows": rows})
                if not args.json:
                    print(f"50% {pattern}, {label}, {tokens} token(s)")
                    for r in rows:
                        if "note" in r:
                            print(f"  {r['path']:<34} {r['note']}")
                        else:
                            print(f"  {r['path']:<34} {r['wall_us']:>9.1f} µs wall {r['cpu_us']:>9.1f} µs CPU   "
                                  f"ratio {r['ratio_wall']:5.2f} ±{r['ratio_iqr'] / 2:.2f} wall {r['ratio_cpu']:5.2f} CPU"
                                  + (f"  ({r['why']})" if r["noisy"] else ""))
    best = {}
    for res in results:
        for r in res["rows"]:
            if "ratio_cpu" in r and not r["path"].startswith(("dense", "structured")):
                best[r["path"]] = max(best.get(r["path"], 0.0), r["ratio_cpu"])
    summary = {"best CPU-time ratio of each sparse path over every shape and token count": best}
    print(json.dumps(results if args.json else summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
