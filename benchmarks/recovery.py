"""Recovery after pruning SmolLM2-135M: perplexity before and after a short causal-LM fine-tune of
only the biases and norms (PERP) or of masked LoRA adapters merged back, at one fixed step budget.

    # the README's table (one process per line, each a few minutes on one shared core)
    python benchmarks/recovery.py --runs wanda-50,sparsegpt-50 --nsamples 8 --eval-windows 4 --steps 20 --batch-size 2 --train-seqlen 64
    python benchmarks/recovery.py --runs wanda-60 --nsamples 8 --eval-windows 4 --steps 20 --batch-size 2 --train-seqlen 64
    python benchmarks/recovery.py --runs sparsegpt-60 --nsamples 8 --eval-windows 4 --steps 20 --batch-size 2 --train-seqlen 64
    python benchmarks/recovery.py --runs wanda-60 --nsamples 8 --eval-windows 4 --steps 80 --batch-size 2 --train-seqlen 64

Prunings (``--runs``): Wanda and SparseGPT at 50%, 60%, 70%, magnitude 50% (per layer), 25% of the
MLP neurons removed, SliceGPT 25%. Every mode of one pruning gets the same step budget (steps ×
batch × tokens) and the same window order (``--seed``). Training text: the calibration windows
(cut into --train-seqlen pieces); perplexity on held-out windows of disjoint documents.
Pruning and recovery are the pipeline's stages (``prune``/``structured``/``slice``, then ``recover``), run with
``pipeline.run_stages`` as recipes and ``prunekit prune --recover`` run them. "Recovered" is the share of the pruning's loss increase (log-perplexity) that the fine-tune won back. Memory: one model in memory at a time (the pruned
model is kept on disk between the modes), and each run waits until --min-free-gb of the machine's
memory is available (it is shared); the table gives each recovery's peak resident memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
from pathlib import Path

import psutil
import torch

from prunekit.bench.memory import PeakMemory
from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.pipeline import Workspace, parse_stage, run_stages

PRUNINGS = {  # label: the pipeline stage that prunes (what a recipe lists and prunekit prune runs)
    "wanda-50": {"stage": "prune", "method": "wanda", "sparsity": 0.5},
    "sparsegpt-50": {"stage": "prune", "method": "sparsegpt", "sparsity": 0.5},
    "sparsegpt-60": {"stage": "prune", "method": "sparsegpt", "sparsity": 0.6},
    "sparsegpt-70": {"stage": "prune", "method": "sparsegpt", "sparsity": 0.7},
    "wanda-60": {"stage": "prune", "method": "wanda", "sparsity": 0.6},
    "wanda-70": {"stage": "prune", "method": "wanda", "sparsity": 0.7},
    "magnitude-50": {"stage": "prune", "method": "magnitude", "sparsity": 0.5},
    "neurons-25": {"stage": "structured", "what": "neurons", "sparsity": 0.25, "importance": "activation"},
    "slicegpt-25": {"stage": "slice", "sparsity": 0.25},
}


def wait_for_memory(gb: float, patience_s: float = 1800) -> float:
    """Wait (polling every 30 s, at most ``patience_s``) until ``gb`` GB are available; returns what is."""
    start = time.time()
    while True:
        avail = psutil.virtual_memory().available / 1e9
        if avail >= gb or time.time() - start > patience_s:
            return avail
        print(f"  waiting: {avail:.1f} GB available, want {gb:.1f} GB", flush=True)
        time.sleep(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--train-seqlen", type=int, default=128)
    p.add_argument("--runs", default="wanda-50,wanda-60,sparsegpt-50,sparsegpt-60",
                   help=f"comma-separated subset of {', '.join(PRUNINGS)}")
    p.add_argument("--seed", type=int, default=0, help="order of the training windows (the same for every mode)")
    p.add_argument("--modes", default="bias_norm,lora")
    p.add_argument("--lr", type=float, default=None, help="one learning rate for every mode (default: per mode)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-free-gb", type=float, default=4.0, help="wait for this much available memory per run")
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = [r for r in a.runs.split(",") if r]
    unknown = [r for r in runs if r not in PRUNINGS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; known: {', '.join(PRUNINGS)}")
    lm = load_model("smollm2-135m")
    calib = calibration_windows(lm.tokenizer, "pydocs", a.nsamples, a.seqlen, seed=0)
    evalw = eval_windows(lm.tokenizer, "pydocs", a.eval_windows, a.seqlen)
    dense_ppl = perplexity(lm.model, evalw, progress=False)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    del lm
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        for run in runs:
            model = load_model("smollm2-135m").model
            run_stages([parse_stage(PRUNINGS[run])], Workspace(model=model, calibration=calib, progress=False))
            before = perplexity(model, evalw, progress=False)
            params = sum(q.numel() for q in model.parameters())
            saved = Path(tmp) / "pruned.pt"
            torch.save(model.state_dict(), saved)  # recovery leaves the module structure as it found it
            print(f"{run}: perplexity {before:.2f}, {params:,} parameters", flush=True)
            for i, mode in enumerate(a.modes.split(",")):
                if i:
                    model.load_state_dict(torch.load(saved))
                avail = wait_for_memory(a.min_free_gb)
                recover = parse_stage({"stage": "recover", "recover": mode, "steps": a.steps, "batch_size": a.batch_size,
                                       "seqlen": a.train_seqlen, "lr": a.lr, "seed": a.seed})
                with PeakMemory() as mem:
                    ws = run_stages([recover], Workspace(model=model, calibration=calib, progress=False))
                rep = ws.records[-1]  # the recover stage's record: LMRecoveryReport.to_dict()
                after = perplexity(model, evalw, progress=False)
                share = (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense_ppl))
                rows.append({"pruning": run, "mode": mode, "ppl_pruned": before, "ppl_recovered": after,
                             "recovered_share": share, "peak_rss": mem.peak_bytes, "added_rss": mem.added_bytes,
                             "available_gb_before": avail, **{k: v for k, v in rep.items() if k != "stage"}})
                print({k: v for k, v in rows[-1].items() if k != "losses"}, flush=True)
                if a.json:
                    Path(a.json).write_text(json.dumps({"settings": vars(a), "dense": dense_ppl, "rows": rows},
                                                       indent=2))
            del model
            gc.collect()
    print(f"\nSmolLM2-135M: dense perplexity {dense_ppl:.2f} over {a.eval_windows}×{a.seqlen} held-out tokens; "
          f"recovery {a.steps} steps × {a.batch_size} × {a.train_seqlen} tokens of the {a.nsamples}×{a.seqlen} "
          f"calibration windows, AdamW, window order seed {a.seed}, {a.threads} thread(s)\n")
    print("| pruning | recovery | trained | perplexity pruned → recovered | loss gap recovered | time (wall / CPU) "
          "| peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pruning']} | {r['mode']} (lr {r['lr']:g}) | {r['trained_params']:,} ({r['trained_fraction']:.3%}) | "
              f"{r['ppl_pruned']:.2f} → {r['ppl_recovered']:.2f} | {r['recovered_share']:.0%} | "
              f"{r['seconds']:.0f} s / {r['cpu_seconds']:.0f} s | {r['peak_rss'] / 1e9:.2f} GB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
