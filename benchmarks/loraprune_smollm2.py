"""LoRAPrune (Zhang et al., 2023) on SmolLM2-135M-Instruct: half of every MLP's neurons removed while fine-tuning
with LoRA, ranked by the LoRA-guided criterion, against the same iterative run ranked by the weights' true
gradients, and against one-shot removal (by activations, Minitron's; or by weight norms) followed by the same LoRA
fine-tune (activations measured on 32 of the calibration windows). Every arm trains the same adapters (rank ``--rank``, biases and norms) for the same ``--steps`` ×
``--batch`` × ``--train-seqlen`` tokens at the same learning rate, on the same windows in the same order.

Each arm runs in its own process (one torch thread), so its peak resident memory is its own: LoRAPrune's
criterion exists to avoid the weights' gradients. Perplexity on ``--eval-windows`` × 256 held-out pydocs tokens.
A claim is decided by the paired difference over ``--seeds`` (the calibration sample, the adapters' draw and the
window order): held when it exceeds 2 standard errors.

``--what heads``: the same arms on attention heads instead (SmolLM2's 9 query heads in 3 key/value groups go by
whole groups: ``--sparsity 0.5`` keeps 2 of 3; the one-shot arms use ``prune_heads_`` by activations or weight norms).

    nice -n 10 python benchmarks/loraprune_smollm2.py                  # the README's table
    python benchmarks/loraprune_smollm2.py --steps 4 --seeds 0 --eval-windows 2 --arms lora   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ARMS = {
    "lora": "LoRAPrune, LoRA-guided criterion",
    "gradient": "LoRAPrune schedule, true-gradient criterion",
    "activation": "one-shot by activations + LoRA",
    "l2": "one-shot by weight norms + LoRA",
}


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """One arm, one seed, in this process: prune, fine-tune, measure."""
    torch.set_num_threads(1)
    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model
    from prunekit.structured import prune_heads_, prune_neurons_
    from prunekit.train.loraprune import loraprune_
    from prunekit.train.recovery_lm import recover_lm_, training_windows

    lm = load_model("smollm2-135m")
    model = lm.model.float().eval()
    evals = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, 256)
    calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, 256, seed)
    train = training_windows(calib, args.train_seqlen)
    common = dict(steps=args.steps, batch_size=args.batch, rank=args.rank, lr=args.lr, seed=seed, progress=False)
    dense_ppl = perplexity(model, evals, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    row: dict = {"arm": arm, "seed": seed, "dense_ppl": dense_ppl}
    if arm in ("lora", "gradient"):
        report = loraprune_(model, train, what=args.what, criterion=arm, sparsity=args.sparsity,
                            prune_every=args.prune_every, **common)
        row["events"] = report.events
        row["loss_last"] = report.to_dict()["loss_last"]
    else:
        scored = list(calib[:32].split(4)) if arm == "activation" else None  # 32 × 256 tokens, 4 windows a batch
        (prune_heads_ if args.what == "heads" else prune_neurons_)(model, args.sparsity, arm, seed, scored)
        row["cut_ppl"] = perplexity(model, evals, progress=False)
        report = recover_lm_(model, train, recover="lora", **common)
        row["loss_last"] = report.to_dict()["loss_last"]
    row.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, ppl=perplexity(model, evals, progress=False),
               params=sum(p.numel() for p in model.parameters()), intermediate=model.config.intermediate_size,
               heads=model.config.num_attention_heads,
               tokens=args.steps * args.batch * args.train_seqlen)
    with open("/proc/self/status") as f:
        row["peak_rss_mb"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return row


LABELS = {"lora": "LoRAPrune (LoRA-guided)", "gradient": "LoRAPrune (true gradients)",
          "activation": "one-shot activations + LoRA", "l2": "one-shot weight norms + LoRA"}


def payload(record: dict) -> dict:
    """``record`` with what the results store reads (benchmarks/apps_papers.py): the benchmark's name, the model,
    one run per row, and the verdicts."""
    runs = [{"label": LABELS[r["arm"]], "seed": r["seed"],
             "figures": {"ppl": r["ppl"], "neg_log_ppl": -math.log(r["ppl"]), "peak_rss_mb": r["peak_rss_mb"],
                         "neg_peak_rss_mb": -r["peak_rss_mb"], "cpu_s": r["cpu_s"], "params": r["params"]}}
            for r in record["rows"]]
    found = [verdict(record["rows"], "lora", other) for other in ("gradient", "activation", "l2")]
    found.append(verdict(record["rows"], "gradient", "activation"))
    name = "loraprune_smollm2" + ("_heads" if record["settings"].get("what") == "heads" else "")
    return {**record, "benchmark": name, "model": "SmolLM2-135M-Instruct", "runs": runs,
            "verdicts": [v for v in found if v]}


def verdict(rows: list[dict], better: str, worse: str) -> dict:
    """Paired over seeds: ``worse``'s perplexity minus ``better``'s, mean ± standard error, and the verdict."""
    by = {(r["arm"], r["seed"]): r["ppl"] for r in rows}
    seeds = sorted({s for a, s in by if a == better and (worse, s) in by})
    diffs = [by[(worse, s)] - by[(better, s)] for s in seeds]
    if not diffs:
        return {}
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
    word = "held" if mean > 2 * se else ("reversed" if mean < -2 * se else "within noise")
    return {"better": better, "worse": worse, "seeds": len(diffs), "diff": mean, "se": se, "verdict": word}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["lora", "gradient", "activation"], choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--what", choices=["neurons", "heads"], default="neurons")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--train-seqlen", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=100, help="calibration windows of 256 tokens (cut in two for training)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--prune-every", type=int, default=4)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "loraprune_smollm2.json"))
    ap.add_argument("--child", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="only rewrite --json's verdicts and runs and print its table")
    args = ap.parse_args()
    if args.table:
        record = payload(json.loads(Path(args.json).read_text()))
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print_table(record, list(dict.fromkeys(r["arm"] for r in record["rows"])))
        return
    if args.child:
        print(json.dumps(run_arm(args.child[0], int(args.child[1]), args)))
        return
    out = Path(args.json)
    record = {"settings": {k: v for k, v in vars(args).items() if k != "child"}, "threads": 1, "rows": []}
    passthrough = [a for a in sys.argv[1:]]
    for seed in args.seeds:
        for arm in args.arms:
            res = subprocess.run([sys.executable, __file__, *passthrough, "--child", arm, str(seed)], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if res.returncode != 0:
                raise SystemExit(f"{arm} seed {seed} failed:\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            record["rows"].append(row)
            print(f"seed {seed} {arm:<10} ppl {row['ppl']:8.3f}  (dense {row['dense_ppl']:.3f}"
                  + (f", cut {row['cut_ppl']:.1f}" if "cut_ppl" in row else "")
                  + f")  {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU, peak {row['peak_rss_mb']:,.0f} MB", flush=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
    record = payload(record)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record, args.arms)


def print_table(record: dict, arms: list[str]) -> None:
    print("\n| arm | perplexity (mean ± sd) | CPU s | peak RSS MB |\n|---|---:|---:|---:|")
    for arm in arms:
        rows = [r for r in record["rows"] if r["arm"] == arm]
        ppl = [r["ppl"] for r in rows]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        print(f"| {ARMS[arm]} | {statistics.fmean(ppl):.2f} ± {sd:.2f} | "
              f"{statistics.fmean(r['cpu_s'] for r in rows):.0f} | {max(r['peak_rss_mb'] for r in rows):,.0f} |")
    for v in record["verdicts"]:
        print(f"{v['worse']} − {v['better']}: {v['diff']:+.3f} ± {v['se']:.3f} ({v['verdict']}, {v['seeds']} seeds)")


if __name__ == "__main__":
    main()
