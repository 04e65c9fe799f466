"""SliceGPT on the real SmolLM2-135M: parameters, held-out perplexity and forward latency at several
slicing fractions, against the dense model and against Wanda (masks) and structured MLP-neuron
removal at the *same parameter count*.

    python benchmarks/slicing.py --nsamples 8 --eval-windows 8 --fractions 0.2,0.25,0.3 --per-layer 0.25

Perplexity: non-overlapping held-out windows of Python's docs (calibration from disjoint documents).
Forward time: median CPU time of this process's forward passes at batch 1 × 128 and 4 × 128 tokens, one
thread (on a shared machine the wall-clock latency, also printed, is dominated by other load).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.infra.latency import latency
from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.slicing import slice_


def forward_cpu_ms(model: torch.nn.Module, ids: torch.Tensor, runs: int) -> float:
    """Median CPU time (this process, one thread) of a forward pass: robust to other load on a shared machine,
    where wall-clock latency is not."""
    times = []
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
        for _ in range(runs):
            t = time.process_time()
            model(input_ids=ids, use_cache=False)
            times.append((time.process_time() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(model: torch.nn.Module, evalw: torch.Tensor, runs: int) -> dict:
    """Parameters, non-zeros, perplexity, and forward time at batch 1 and 4 × 128 tokens (CPU ms; wall ms)."""
    ids = torch.randint(0, model.config.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
    s = pk.summary(model)
    return {"params": s.params, "nonzeros": s.nonzeros, "perplexity": perplexity(model, evalw, progress=False),
            "ms_b1": forward_cpu_ms(model, ids[:1], runs), "ms_b4": forward_cpu_ms(model, ids, max(2, runs // 2)),
            "wall_ms_b1": latency(model, {"input_ids": ids[:1]}, runs=3, warmup=0, threads=None).median_ms}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--fractions", default="0.2,0.25,0.3")
    p.add_argument("--per-layer", default="0.25", help="fractions also run with per-layer rotations ('' for none)")
    p.add_argument("--no-equal", action="store_true", help="skip the Wanda / neuron runs at equal parameter count")
    p.add_argument("--latency-runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    dense = lm.model
    calib = calibration_windows(lm.tokenizer, "pydocs", a.nsamples, a.seqlen, seed=0)
    evalw = eval_windows(lm.tokenizer, "pydocs", a.eval_windows, a.seqlen)
    rows = [{"run": "dense", **measure(dense, evalw, a.latency_runs), "seconds": None}]
    print(rows[-1], flush=True)
    scope = sum(t.numel for t in pk.select_targets(dense, None))
    mlp = sum(m.weight.numel() for n, m in dense.named_modules() if n.endswith(("gate_proj", "up_proj", "down_proj")))
    fractions = [float(f) for f in a.fractions.split(",") if f]
    per_layer = [float(f) for f in a.per_layer.split(",") if f]
    for frac in fractions:
        for rotation in ["shared"] + (["per_layer"] if frac in per_layer else []):
            m = copy.deepcopy(dense)
            t, cpu = time.perf_counter(), time.process_time()
            rep = slice_(m, sparsity=frac, rotation=rotation, calibration=calib, progress=False, allow_growth=True)
            took = time.process_time() - cpu
            rows.append({"run": f"slicegpt {frac:.0%} ({rotation})", **measure(m, evalw, a.latency_runs),
                         "seconds": time.perf_counter() - t, "cpu_seconds": took, "hidden": rep.hidden_after})
            print(rows[-1], flush=True)
            del m
        if a.no_equal:
            continue
        target = rows[-1 - (1 if frac in per_layer else 0)]["params"]  # the shared-rotation model's size
        removed = rows[0]["params"] - target
        m = copy.deepcopy(dense)
        ratio = removed / mlp
        t, cpu = time.perf_counter(), time.process_time()
        pk.structured.prune_neurons_(m, ratio=ratio, importance="activation", calibration=calib)
        rows.append({"run": f"neurons {ratio:.1%} (same params as slicegpt {frac:.0%})",
                     **measure(m, evalw, a.latency_runs), "seconds": time.perf_counter() - t,
                     "cpu_seconds": time.process_time() - cpu})
        print(rows[-1], flush=True)
        m = copy.deepcopy(dense)
        sparsity = removed / scope
        t, cpu = time.perf_counter(), time.process_time()
        pk.prune_(m, "wanda", sparsity, calibration=calib, progress=False)
        pk.finalize_(m)
        rows.append({"run": f"wanda {sparsity:.1%} (same non-zeros as slicegpt {frac:.0%})",
                     **measure(m, evalw, a.latency_runs), "seconds": time.perf_counter() - t,
                     "cpu_seconds": time.process_time() - cpu})
        print(rows[-1], flush=True)
        del m
    print(f"\nSmolLM2-135M fp32, calibration {a.nsamples}×{a.seqlen}, perplexity over {a.eval_windows}×{a.seqlen} "
          f"held-out tokens of Python's docs, {a.threads} thread(s)\n")
    print("| run | parameters | non-zeros | perplexity | forward 1×128 (CPU) | forward 4×128 (CPU) | forward 1×128 (wall) "
          "| slicing/pruning time (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = "–" if r.get("cpu_seconds") is None else f"{r['cpu_seconds']:.0f} s"
        print(f"| {r['run']} | {r['params'] / 1e6:.1f} M | {r['nonzeros'] / 1e6:.1f} M | {r['perplexity']:.2f} | "
              f"{r['ms_b1']:.0f} ms | {r['ms_b4']:.0f} ms | {r['wall_ms_b1']:.0f} ms | {cpu} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
