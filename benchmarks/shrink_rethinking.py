"""The "Rethinking the Value of Network Pruning" control (Liu et al., 2019) on SmolLM2-135M: the shape a shrink
chose, trained from random initialisation with the same tokens, against the pruned model distilled with them.

    nice -n 10 python benchmarks/shrink_rethinking.py
    nice -n 10 python benchmarks/shrink_rethinking.py --pruned-from benchmarks/results/shrink_per_layer.json

1. The uniform shape is chosen and cut as ``shrink_`` does (``--target``, ``--axes``, ``--candidates`` scored on
   ``--nsamples`` calibration windows of seed ``--seed``).
2. **pruned + KD**: the cut model distilled from the dense one, ``--kd-steps`` × ``--kd-batch`` × ``--kd-seqlen``
   tokens at ``--kd-lr`` (or, with ``--pruned-from``, that arm read from a ``shrink_per_layer.py`` result of
   the same seed, shape and settings when it holds one by the time the scratch arm is done).
3. **scratch + KD**: a model of exactly that shape built from its config with the family's own random
   initialisation, distilled with the same loss on the same tokens (the same stream, the same seed), at
   ``--scratch-lr`` (a from-scratch learning rate; the fine-tuning one is far too small for random weights).

Perplexity on held-out Python docs (``--eval-windows`` × ``--seqlen``). The claim **holds** at this budget if
scratch + KD is at least as good as pruned + KD. One torch thread; wall and CPU time per arm. Results:
``benchmarks/results/shrink_rethinking.json``.

``--combine FILE ... --results OUT`` joins runs of several seeds (one file each) into one file with, per token
budget, the paired difference scratch − pruned over the seeds (mean ± standard error; held when scratch is not
worse by more than 2 standard errors): ``benchmarks/results/shrink_rethinking_seeds.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--axes", default="heads,neurons,depth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=1)
    p.add_argument("--kd-seqlen", type=int, default=128)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--scratch-lr", type=float, default=1e-3)
    p.add_argument("--pruned-from", default=None, help="a shrink_per_layer.py result to read the pruned + KD arm from")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_rethinking.json"))
    p.add_argument("--combine", nargs="+", default=None, metavar="FILE", help="join these runs' results (see above)")
    args = p.parse_args()
    if args.combine:
        combine([Path(f) for f in args.combine], Path(args.results))
        return
    torch.set_num_threads(1)

    from transformers import AutoModelForCausalLM

    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.infra.latency import stopwatch
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_
    from prunekit.shrink.distill import distill_, text_stream

    axes = tuple(a for a in args.axes.split(",") if a)
    lm = load_model("smollm2-135m")
    dense = lm.model.eval()
    windows = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, args.seqlen)
    calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, args.seed)
    record: dict = {"settings": vars(args), "threads": 1, "cores": os.cpu_count(), "load_before": os.getloadavg()}
    out = Path(args.results)

    def save() -> None:
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    kd = dict(steps=args.kd_steps, batch_size=args.kd_batch, seqlen=args.kd_seqlen, seed=args.seed, progress=False)
    record["dense_perplexity"] = perplexity(dense, windows, progress=False)
    pruned = copy.deepcopy(dense)
    t = stopwatch()
    rep = shrink_(pruned, args.target, calib, axes, candidates=args.candidates)
    record["shape"] = str(rep.shape_after)
    record["non_embedding_kept"] = rep.non_embedding_kept
    record["search"] = t()
    torch.manual_seed(args.seed)
    scratch = AutoModelForCausalLM.from_config(copy.deepcopy(pruned.config), dtype=torch.float32)
    assert sum(p.numel() for p in scratch.parameters()) == sum(p.numel() for p in pruned.parameters())
    arm = {"perplexity_init": perplexity(scratch, windows, progress=False)}
    t = stopwatch()
    arm["distill"] = distill_(scratch, dense, text_stream(lm.tokenizer, "pydocs", args.kd_seqlen, args.seed),
                              lr=args.scratch_lr, **kd).to_dict()
    arm["time"] = t()
    arm["perplexity_kd"] = perplexity(scratch, windows, progress=False)
    record["scratch"] = arm
    save()
    print(f"scratch + KD: {arm['perplexity_init']:.0f} → {arm['perplexity_kd']:.2f}", flush=True)
    del scratch
    reused = None
    if args.pruned_from and Path(args.pruned_from).is_file():
        for run in json.loads(Path(args.pruned_from).read_text())["runs"]:
            same = (run["variant"] == "uniform" and run["seed"] == args.seed and run["shape"] == record["shape"]
                    and "distill" in run and run["distill"]["tokens"] == args.kd_steps * args.kd_batch * args.kd_seqlen
                    and run["distill"]["lr"] == args.kd_lr)
            if same:
                reused = run
    if reused is not None:
        record["pruned"] = {"perplexity_cut": reused["perplexity_cut"], "perplexity_kd": reused["perplexity_kd"],
                            "distill": reused["distill"], "from": args.pruned_from}
    else:
        arm = {"perplexity_cut": perplexity(pruned, windows, progress=False)}
        t = stopwatch()
        arm["distill"] = distill_(pruned, dense, text_stream(lm.tokenizer, "pydocs", args.kd_seqlen, args.seed),
                                  lr=args.kd_lr, **kd).to_dict()
        arm["time"] = t()
        arm["perplexity_kd"] = perplexity(pruned, windows, progress=False)
        record["pruned"] = arm
    save()
    print(f"pruned + KD ({record['shape']}): {record['pruned']['perplexity_cut']:.2f} → "
          f"{record['pruned']['perplexity_kd']:.2f}", flush=True)

    held = record["scratch"]["perplexity_kd"] <= record["pruned"]["perplexity_kd"]
    record["verdict"] = ("held: training the shape from scratch was as good or better" if held else
                         f"not held at {args.kd_steps * args.kd_batch * args.kd_seqlen:,} tokens: pruned + KD "
                         "is better than the same shape trained from scratch")
    record["load_after"] = os.getloadavg()
    save()
    print(record["verdict"], flush=True)


def combine(files: list[Path], out: Path) -> None:
    """One file of the runs in ``files`` and, per token budget, the paired scratch − pruned perplexity over seeds."""
    import math
    import statistics

    runs = [json.loads(f.read_text()) for f in files]
    for f, r in zip(files, runs):
        if "pruned" not in r or "scratch" not in r:
            raise SystemExit(f"{f}: not a finished shrink_rethinking.py result (both arms are needed)")
    budgets: dict[int, list[dict]] = {}
    for r in runs:
        budgets.setdefault(r["scratch"]["distill"]["tokens"], []).append(r)
    summary = []
    for tokens, rs in sorted(budgets.items()):
        seeds = sorted(r["settings"]["seed"] for r in rs)
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"two runs of seed {seeds} at {tokens:,} tokens: pass one file per seed")
        diffs = [r["scratch"]["perplexity_kd"] - r["pruned"]["perplexity_kd"] for r in rs]
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
        summary.append({"tokens": tokens, "seeds": seeds, "shape": sorted({r["shape"] for r in rs}),
                        "scratch_kd": [r["scratch"]["perplexity_kd"] for r in rs],
                        "pruned_kd": [r["pruned"]["perplexity_kd"] for r in rs],
                        "dense": rs[0]["dense_perplexity"], "scratch_minus_pruned": mean, "se": se,
                        "verdict": "held" if mean <= 2 * se else "not held"})
    out.write_text(json.dumps({"files": [f.name for f in files], "budgets": summary, "runs": runs}, indent=2,
                              default=str) + "\n")
    for b in summary:
        print(f"{b['tokens']:,} tokens, seeds {b['seeds']}: scratch − pruned {b['scratch_minus_pruned']:+.1f} ± "
              f"{b['se']:.1f} → {b['verdict']}")


if __name__ == "__main__":
    main()
