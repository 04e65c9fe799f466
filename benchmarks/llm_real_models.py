"""Perplexity dense / Wanda 50% / SparseGPT 50% / 2:4 on a real pretrained LLM, with pruning times.

Loads the model (GGUF files convert once into prunekit's cache, so later loads take seconds), measures
the dense perplexity, then for each run loads the dense model again, prunes, bakes the masks in and
measures again (a fresh load rather than a second copy of the weights in memory: the shared machine's
memory is tight). Wall and
CPU time of the pruning call are printed side by side (the CPU time is the fairer figure on a shared
machine), with one plain forward over the calibration tokens as the yardstick.

    python benchmarks/llm_real_models.py --model gemma3-270m --nsamples 32 --eval-windows 16 --threads 1
    python benchmarks/llm_real_models.py --model smollm2-135m --runs wanda,sparsegpt
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.pipeline import Workspace, parse_stage, run_stages, stage_dict

RUNS = {  # label: the pipeline's stages (what a recipe lists and prunekit prune runs), masks baked in after
    "wanda": [{"stage": "prune", "method": "wanda", "sparsity": 0.5}, {"stage": "finalize"}],
    "sparsegpt": [{"stage": "prune", "method": "sparsegpt", "sparsity": 0.5}, {"stage": "finalize"}],
    "wanda-2:4": [{"stage": "prune", "method": "wanda", "pattern": "2:4"}, {"stage": "finalize"}],
    "sparsegpt-2:4": [{"stage": "prune", "method": "sparsegpt", "pattern": "2:4"}, {"stage": "finalize"}],
    "magnitude": [{"stage": "prune", "method": "magnitude", "sparsity": 0.5}, {"stage": "finalize"}],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", help="alias, Hugging Face folder or .gguf file")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=1, help="windows per perplexity batch (large vocabularies: keep small)")
    p.add_argument("--runs", default="wanda,sparsegpt,wanda-2:4,sparsegpt-2:4", help=f"subset of {', '.join(RUNS)}")
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")

    t0 = time.perf_counter()
    lm = load_model(a.model)
    load_s = time.perf_counter() - t0
    model, tok = lm.model, lm.tokenizer
    calib = calibration_windows(tok, "pydocs", a.nsamples, a.seqlen, seed=0)
    evalw = eval_windows(tok, "pydocs", a.eval_windows, a.seqlen)
    print(f"{a.model}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"loaded in {load_s:.0f} s", flush=True)
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for b in calib.split(8):
            model.model(input_ids=b, use_cache=False)
    forward = (time.perf_counter() - t, time.process_time() - c)
    print(f"one plain forward over the calibration tokens (no LM head): {forward[0]:.1f} s wall, {forward[1]:.1f} s CPU",
          flush=True)
    rows = [{"run": "dense", "perplexity": perplexity(model, evalw, batch_size=a.eval_batch, progress=False)}]
    print(f"dense                ppl {rows[0]['perplexity']:8.2f}", flush=True)
    for label in runs:
        stages = [parse_stage(s) for s in RUNS[label]]
        del model, lm
        gc.collect()
        lm = load_model(a.model)
        model = lm.model
        ws = Workspace(model=model, tokenizer=tok, calibration=calib, progress=False)
        t, c = time.perf_counter(), time.process_time()
        run_stages(stages, ws)  # every check first, then prune and bake the masks in (finalize: a few ms)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        pruned = ws.records[0]
        layers = ws.meta["layers"]
        ppl = perplexity(model, evalw, batch_size=a.eval_batch, progress=False)
        rows.append({"run": label, "perplexity": ppl, "seconds": seconds, "cpu_seconds": cpu,
                     "sparsity_in_scope": pruned["sparsity"], "tensors": len(layers), "skipped": pruned["skipped"],
                     "stages": [stage_dict(*st) for st in stages]})
        print(f"{label:<20} ppl {ppl:8.2f}  prune {seconds:7.1f} s wall {cpu:7.1f} s CPU  "
              f"({cpu / forward[1]:.2f}× one forward)  sparsity {pruned['sparsity']:.4f} over {len(layers)} tensors",
              flush=True)
    print(f"\n{a.model}: calibration pydocs {a.nsamples}×{a.seqlen} (seed 0), perplexity over {a.eval_windows}×{a.seqlen} "
          f"held-out tokens, {a.threads} thread(s)")
    print("| run | perplexity | pruning time (wall) | CPU time |\n|---|---|---|---|")
    for r in rows:
        extra = f"{r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s" if "seconds" in r else "– | –"
        print(f"| {r['run']} | {r['perplexity']:.2f} | {extra} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "forward": forward, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
