"""Recovery after a shrink, the alternatives side by side at the same token budget, on SmolLM2-135M.

    python benchmarks/shrink_recovery.py                       # seeds 0,1,2: the README's figures
    python benchmarks/shrink_recovery.py --seeds 0 --kd-steps 2 --modes kd,next-token   # a quick look

For each seed (the calibration sample and the training text's order), the dense model is cut once to
``--target`` along ``--axes`` (``shrink_``, uniform shape; the width is kept, so the hidden-state loss applies),
and copies of the cut model are recovered by each mode in ``--modes``, every one with the same steps × batch
× tokens of the Python docs' calibration split, in the same order:

- ``kd``: logit distillation from the dense model (KL, T = 1), every weight trains (Minitron's recovery);
- ``kd-ce``: the same plus 0.5 × the text's cross-entropy (``ce_weight``);
- ``kd-hidden``: the same plus Minitron's hidden-state loss (``hidden_weight`` 1);
- ``lora``: logit distillation into rank-8 LoRA adapters (plus biases and norms), merged at the end, at
  ``--lora-lr`` (adapters start at zero and need a larger rate than full weights);
- ``next-token``: plain causal-LM fine-tuning on the text, no teacher.

Perplexity on ``--eval-windows`` × ``--seqlen`` held-out tokens (the evaluation split, never trained on);
one torch thread; CPU and wall seconds per recovery. Results: ``benchmarks/results/shrink_recovery.json``
(rewritten after every recovery, so a partial run is kept; ``--resume`` skips the (seed, mode) pairs it holds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "kd": {},
    "kd-ce": {"ce_weight": 0.5},
    "kd-hidden": {"hidden_weight": 1.0},
    "lora": {"train": "lora", "lora_rank": 8},
    "next-token": {"objective": "next_token"},
}


def summary(record: dict) -> list[str]:
    """Markdown table: perplexity per mode and seed, mean ± sample standard deviation, CPU seconds."""
    seeds = sorted({r["seed"] for r in record["runs"]})
    lines = ["| recovery | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | CPU s per run |",
             "|---|" + "---|" * (len(seeds) + 2)]
    cut = {c["seed"]: c["perplexity_cut"] for c in record["cuts"]}
    lines.append("| none (the cut) | " + " | ".join(f"{cut.get(s, float('nan')):.2f}" for s in seeds) + " | "
                 + _mean_sd([cut[s] for s in seeds if s in cut]) + " | |")
    for mode in MODES:
        runs = {r["seed"]: r for r in record["runs"] if r["mode"] == mode}
        if not runs:
            continue
        vals = [runs[s]["perplexity"] for s in seeds if s in runs]
        cpu = statistics.mean(r["distill"]["cpu_seconds"] for r in runs.values())
        lines.append(f"| {mode} | " + " | ".join(f"{runs[s]['perplexity']:.2f}" if s in runs else "" for s in seeds)
                     + f" | {_mean_sd(vals)} | {cpu:.0f} |")
    return lines


def _mean_sd(vals: list[float]) -> str:
    if not vals:
        return ""
    sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--axes", default="heads,neurons,depth")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=1)
    p.add_argument("--kd-seqlen", type=int, default=128)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_recovery.json"))
    p.add_argument("--resume", action="store_true", help="keep the results file's runs and skip them")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown recovery mode(s) {unknown}: choose from {', '.join(MODES)}")
    torch.set_num_threads(1)

    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.infra.latency import stopwatch
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_
    from prunekit.shrink.distill import distill_, text_stream

    out = Path(args.results)
    record = json.loads(out.read_text()) if args.resume and out.exists() else {}
    record.update(settings=vars(args), threads=1, cores=os.cpu_count(), modes={m: MODES[m] for m in modes})
    record.setdefault("runs", [])
    record.setdefault("cuts", [])
    done = {(r["seed"], r["mode"]) for r in record["runs"]}

    def save() -> None:
        record["table"] = summary(record)
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    axes = tuple(a for a in args.axes.split(",") if a)
    lm = load_model("smollm2-135m")
    dense = lm.model.eval()
    windows = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, args.seqlen)
    if "dense_perplexity" not in record:
        record["dense_perplexity"] = perplexity(dense, windows, progress=False)
    for seed in [int(s) for s in args.seeds.split(",")]:
        todo = [m for m in modes if (seed, m) not in done]
        if not todo:
            continue
        calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, seed)
        cut = copy.deepcopy(dense)
        t = stopwatch()
        rep = shrink_(cut, args.target, calib, axes, candidates=args.candidates)
        record["cuts"] = [c for c in record["cuts"] if c["seed"] != seed]
        record["cuts"].append({"seed": seed, "shape": str(rep.shape_after), "time": t(),
                               "non_embedding_kept": rep.non_embedding_kept,
                               "perplexity_cut": perplexity(cut, windows, progress=False)})
        save()
        for mode in todo:
            student = copy.deepcopy(cut)
            lr = args.lora_lr if MODES[mode].get("train") == "lora" else args.kd_lr
            teacher = None if MODES[mode].get("objective") == "next_token" else dense
            stream = text_stream(lm.tokenizer, "pydocs", args.kd_seqlen, seed)
            run = {"seed": seed, "mode": mode, "lr": lr, "load_before": os.getloadavg()}
            kd = distill_(student, teacher, stream, steps=args.kd_steps, batch_size=args.kd_batch,
                          seqlen=args.kd_seqlen, lr=lr, seed=seed, progress=False, **MODES[mode])
            run.update(distill=kd.to_dict(), perplexity=perplexity(student, windows, progress=False),
                       load_after=os.getloadavg())
            record["runs"].append(run)
            save()
            print(f"seed {seed} {mode}: perplexity {record['cuts'][-1]['perplexity_cut']:.2f} → "
                  f"{run['perplexity']:.2f} after {kd.tokens:,} tokens; {kd.seconds:.0f} s wall / "
                  f"{kd.cpu_seconds:.0f} s CPU", flush=True)
            del student
    save()
    print("\n".join(record["table"]))


if __name__ == "__main__":
    main()
