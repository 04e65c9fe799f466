"""Timings on a deliberately loaded machine: are they flagged instead of printed as clean numbers?

A dense decoder (a Llama of ``--hidden`` width and ``--layers`` blocks, random weights) and the same
model with half its MLP neurons removed are timed by prunekit's one routine
(:func:`prunekit.metrics.lm.lm_speed`: interleaved, repeated, median and IQR, paired ratio, noisy
flag) twice: first as the machine is, then while ``--hogs`` CPU-bound background processes run
(default: twice the cores). The table gives, for each condition, the forward latency at batch 1 and 8
and the generation speed of both models, their spread, the paired ratio and the flag.

    nice -n 10 python benchmarks/timing_under_load.py            # about a minute
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import torch

from prunekit.metrics.lm import lm_speed
from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.structured import prune_neurons_

HOG = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass"


def measure(models: dict, tok, budget: float) -> dict:
    return lm_speed(models, tok, forward=True, gen_tokens=16, threads=1, budget_s=budget)


def flag(*figures: dict) -> str:
    """One short flag for a row: the widest spread and the least CPU share among its figures."""
    why = [w for f in figures for w in f["why"]]
    if not why:
        return "trusted"
    spreads = [w for w in why if w.startswith("±")]
    busy = [w for w in why if w.startswith("machine busy")]
    parts = [max(spreads, key=lambda w: int(w[1:-1]))] if spreads else []
    if busy:
        parts.append(min(busy, key=lambda w: float(re.findall(r"[\d.]+", w)[0])))  # the least CPU share
    return ", ".join(parts)


def rows(label: str, timed: dict) -> list[str]:
    out = []
    for key, what in (("latency_batch1", "forward batch 1"), ("latency_batch8", "forward batch 8")):
        d, p = timed["models"]["dense"][key], timed["models"]["pruned"][key]
        r = timed["ratios"][key]
        out.append(f"| {label} | {what} | {d['median_ms']:.1f} ±{d['iqr_ms'] / 2:.1f} ms | "
                   f"{p['median_ms']:.1f} ±{p['iqr_ms'] / 2:.1f} ms | {r['median']:.3f} ±{r['iqr'] / 2:.3f} | "
                   f"{flag(d, p)} |")
    d, p = timed["models"]["dense"]["generation"], timed["models"]["pruned"]["generation"]
    r = timed["ratios"]["generation"]
    out.append(f"| {label} | generation tokens/s | {d['tokens_per_s']:.1f} ±{d['spread'] / 2:.0%} | "
               f"{p['tokens_per_s']:.1f} ±{p['spread'] / 2:.0%} | {r['median']:.3f} ±{r['iqr'] / 2:.3f} | "
               f"{flag(d, p)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hogs", type=int, default=2 * (os.cpu_count() or 2))
    ap.add_argument("--budget", type=float, default=15.0, help="seconds per timed comparison")
    args = ap.parse_args()
    tok = tiny_tokenizer()
    dense = tiny_model("llama", vocab_size=tok.vocab_size, hidden=args.hidden, layers=args.layers,
                       intermediate_size=4 * args.hidden)
    pruned = tiny_model("llama", vocab_size=tok.vocab_size, hidden=args.hidden, layers=args.layers,
                        intermediate_size=4 * args.hidden)
    prune_neurons_(pruned, sparsity=0.5)
    models = {"dense": dense, "pruned": pruned}
    print(f"Llama {args.hidden} wide, {args.layers} blocks (random weights); pruned: 50% of MLP neurons; 1 thread; "
          f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.1f}", flush=True)
    table = ["| machine | figure | dense | pruned | pruned/dense (paired) | flag |", "|---|---|---|---|---|---|"]
    table += rows("as it is", measure(models, tok, args.budget))
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=4 * args.budget + 30)]) for _ in range(args.hogs)]
    try:
        time.sleep(2)
        table += rows(f"{args.hogs} CPU hogs", measure(models, tok, args.budget))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print("\n".join(table))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
