"""FinerCut ("FinerCut: Finer-grained Interpretable Layer Pruning for Large Language Models") on SmolLM2-135M:
removing attention / MLP sublayers, chosen greedily (prunekit.structured.transformers.blocks.prune_layers_,
unit="sublayer"), against removing whole blocks by ShortGPT's block influence (unit="block") — the same number of
sublayers gone (k blocks = 2k sublayers), no recovery training.

Per seed (the seed draws the calibration windows: --nsamples × --seqlen tokens of pydocs' calibration split) and per
k in --blocks: perplexity on the first --eval-windows × 512 tokens of pydocs' held-out split (transformers, fp32),
parameters left, and the choice itself. The claim (finer-grained removal keeps more quality at the same number of
removed sublayers) is held at a k when the paired difference of log perplexity (blocks − sublayers) over seeds is
above twice its standard error.

    nice -n 10 python benchmarks/papers_finercut.py --seeds 0 1 2 --threads 1

Writes one JSON line per arm, k and seed to --out (default benchmarks/results/papers_finercut.jsonl); --table prints
the table of --out; --db FILE stores it in the results store (``--table --db FILE`` without running).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

from _apps_common import append_rows, budget_of, store_papers_or_exit

from prunekit.bench.papers import Measured, PaperResult, compare
from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.structured.transformers.blocks import choose_sublayers, prune_layers_, remove_sublayers_

MODEL = "SmolLM2-135M (fp32, from its GGUF) on Python's docs"
ARMS = ("dense", "blocks (ShortGPT)", "sublayers (FinerCut)")
SHAPES = {arm: {"seed", "ppl", "params", "k"} for arm in ARMS}
PAPER = "FinerCut"
CLAIM = ("removing attention and MLP sublayers (chosen greedily by the output change) keeps a lower perplexity than "
         "removing whole blocks, at the same number of sublayers removed and no retraining")


def run_seed(args, seed: int, lm, evalw: torch.Tensor, dense_ppl: float) -> list[dict]:
    calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, seed=seed, say=lambda *_: None)
    rows = [{"arm": "dense", "seed": seed, "k": 0, "ppl": dense_ppl,
             "params": sum(p.numel() for p in lm.model.parameters())}]
    # FinerCut's greedy choice once, for the largest k: its first 2k choices are its choice of 2k
    t0, c0 = time.perf_counter(), time.process_time()
    order = choose_sublayers(lm.model, calib, 2 * max(args.blocks))
    greedy = {"choose_seconds": time.perf_counter() - t0, "choose_cpu_seconds": time.process_time() - c0}
    for k in sorted(args.blocks):
        for arm in ("blocks (ShortGPT)", "sublayers (FinerCut)"):
            model = copy.deepcopy(lm.model)
            if arm.startswith("blocks"):
                rep = prune_layers_(model, calib, k, unit="block")
                extra = {"removed": rep.removed}
            else:
                remove_sublayers_(model, order[:2 * k])
                extra = {"removed": [list(c) for c in order[:2 * k]], **greedy,
                         "attention_removed": sum(1 for _, kind in order[:2 * k] if kind == "attn")}
            row = {"arm": arm, "seed": seed, "k": k, "ppl": perplexity(model, evalw, progress=False),
                   "params": sum(p.numel() for p in model.parameters()), **extra}
            print(json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()}), flush=True)
            rows.append(row)
            del model
    return rows


def paper_results(rows: list[dict]) -> list[PaperResult]:
    meas = [Measured(r["arm"], f"{r['k']} blocks = {2 * r['k']} sublayers" if r["k"] else "dense", r["seed"],
                     {"log_ppl_gain": -math.log(r["ppl"]), "ppl": r["ppl"], "params": r["params"]}) for r in rows]
    settings = [f"{k} blocks = {2 * k} sublayers" for k in sorted({r["k"] for r in rows if r["k"]})]
    verdict, why = compare(meas, "log_ppl_gain", "sublayers (FinerCut)", ["blocks (ShortGPT)"], settings,
                           percent=False)
    return [PaperResult(PAPER, CLAIM, verdict, "on −log perplexity: " + why, ("ppl", "params"), meas, budget_of(rows))]


def table(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    out = [f"Seeds {seeds}: held-out perplexity (mean ± sd; per seed), parameters, sublayers chosen\n",
           "| removed | arm | perplexity | per seed | parameters | attention sublayers among those removed |",
           "|---|---|---|---|---|---|"]
    for k in sorted({r["k"] for r in rows}):
        for arm in ARMS:
            sel = [r for r in rows if r["k"] == k and r["arm"] == arm]
            if not sel:
                continue
            p = [r["ppl"] for r in sel]
            sd = statistics.stdev(p) if len(p) > 1 else 0.0
            att = " / ".join(str(r["attention_removed"]) for r in sel) if "attention_removed" in sel[0] else "–"
            out.append(f"| {'none' if k == 0 else f'{k} blocks = {2 * k} sublayers'} | {arm} | "
                       f"{statistics.fmean(p):.2f} ± {sd:.2f} | {' / '.join(f'{x:.2f}' for x in p)} | "
                       f"{statistics.fmean(r['params'] for r in sel) / 1e6:.1f} M | {att} |")
    res = paper_results(rows)[0]
    out.append(f"\n**{res.paper}** — {res.verdict}: {res.why}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--blocks", type=int, nargs="+", default=[2, 4], help="k: whole blocks, against 2k sublayers")
    p.add_argument("--nsamples", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_finercut.jsonl"))
    p.add_argument("--table", action="store_true")
    p.add_argument("--db", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        lm = load_model("smollm2-135m")
        lm.model.eval()
        evalw = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, 512, say=lambda *_: None)
        dense_ppl = perplexity(lm.model, evalw, progress=False)
        for seed in args.seeds:
            append_rows(args.out, run_seed(args, seed, lm, evalw, dense_ppl), vars(args),
                        ("out", "table", "db", "threads", "seeds"))
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table(rows))
    store_papers_or_exit(args.db, "papers_finercut", MODEL, [args.out], SHAPES, "arm", paper_results)


if __name__ == "__main__":
    main()
