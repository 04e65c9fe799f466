"""Recovery after pruning SmolLM2-135M: perplexity before and after a short causal-LM fine-tune of
only the biases and norms (PERP) or of masked LoRA adapters merged back, at one fixed step budget.

    python benchmarks/recovery.py --nsamples 8 --eval-windows 8 --steps 40 --batch-size 2 --train-seqlen 128

Prunings: Wanda 60% and 70%, magnitude 50% (per layer), 25% of the MLP neurons removed, SliceGPT 25%. Training
text: the calibration windows (cut into --train-seqlen pieces); perplexity on held-out windows of
disjoint documents. "Recovered" is the share of the pruning's loss increase (log-perplexity)
that the fine-tune won back.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch

import prunekit as pk
from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.slicing import slice_
from prunekit.train import recover_lm_

PRUNINGS = {
    "wanda-60": lambda m, c: pk.prune_(m, "wanda", 0.6, calibration=c, progress=False),
    "wanda-70": lambda m, c: pk.prune_(m, "wanda", 0.7, calibration=c, progress=False),
    "magnitude-50": lambda m, c: pk.prune_(m, "magnitude", 0.5, progress=False),
    "neurons-25": lambda m, c: pk.structured.prune_neurons_(m, ratio=0.25, importance="activation", calibration=c),
    "slicegpt-25": lambda m, c: slice_(m, sparsity=0.25, calibration=c, progress=False),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--train-seqlen", type=int, default=128)
    p.add_argument("--runs", default="wanda-60,wanda-70,magnitude-50,neurons-25")
    p.add_argument("--modes", default="bias_norm,lora")
    p.add_argument("--lr", type=float, default=None, help="one learning rate for every mode (default: per mode)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    calib = calibration_windows(lm.tokenizer, "pydocs", a.nsamples, a.seqlen, seed=0)
    evalw = eval_windows(lm.tokenizer, "pydocs", a.eval_windows, a.seqlen)
    dense_ppl = perplexity(lm.model, evalw, progress=False)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    rows = []
    for run in a.runs.split(","):
        pruned = copy.deepcopy(lm.model)
        PRUNINGS[run](pruned, calib)
        before = perplexity(pruned, evalw, progress=False)
        for mode in a.modes.split(","):
            m = copy.deepcopy(pruned)
            rep = recover_lm_(m, calib, recover=mode, steps=a.steps, batch_size=a.batch_size, seqlen=a.train_seqlen,
                              lr=a.lr, progress=False)
            after = perplexity(m, evalw, progress=False)
            share = (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense_ppl))
            rows.append({"pruning": run, "mode": mode, "ppl_pruned": before, "ppl_recovered": after,
                         "recovered_share": share, **rep.to_dict()})
            print(rows[-1], flush=True)
            del m
        del pruned
    print(f"\nSmolLM2-135M: dense perplexity {dense_ppl:.2f} over {a.eval_windows}×{a.seqlen} held-out tokens; "
          f"recovery {a.steps} steps × {a.batch_size} × {a.train_seqlen} tokens of the {a.nsamples}×{a.seqlen} "
          f"calibration windows, AdamW, {a.threads} thread(s)\n")
    print("| pruning | recovery | trained | perplexity pruned → recovered | loss gap recovered | CPU time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pruning']} | {r['mode']} (lr {r['lr']:g}) | {r['trained_fraction']:.3%} | "
              f"{r['ppl_pruned']:.2f} → {r['ppl_recovered']:.2f} | {r['recovered_share']:.0%} | "
              f"{r['cpu_seconds']:.0f} s |")
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "dense": dense_ppl, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
