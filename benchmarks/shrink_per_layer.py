"""Per-layer shapes against a uniform shape at the same budget and the same distillation, on SmolLM2-135M.

    nice -n 10 python benchmarks/shrink_per_layer.py                 # seed 0, the README's figures
    nice -n 10 python benchmarks/shrink_per_layer.py --seeds 0 --kd-steps 5   # a quick look

For each seed (the calibration sample and the distillation text order), from the same dense model:

- **uniform**: ``shrink_`` to ``--target`` along heads, neurons and depth (the grid, ``--candidates`` shapes
  scored on the calibration loss);
- **per-layer**: ``shrink_layers_`` to the same target along the same axes (every block's key/value groups,
  MLP width, or its removal, scored alone on the first ``--score-tokens`` tokens of ``--score-windows``
  calibration windows, the blocks before the one tried replayed from cache; chosen by the exact MILP);

- **adapt**: Adapt-Pruner's schedule — ``--rounds`` rounds of a per-layer cut (scores measured anew) and
  distillation, the same total steps and text;

then uniform and per-layer are distilled from the dense model with the same settings (``--kd-steps`` × ``--kd-batch`` ×
``--kd-seqlen`` tokens of the Python docs' calibration split) and scored by perplexity on held-out windows
(``--eval-windows`` × ``--seqlen`` of the evaluation split). One torch thread; wall and CPU time per phase.
Results: ``benchmarks/results/shrink_per_layer.json`` (rewritten after every run, so a partial result is kept).
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
    p.add_argument("--seeds", default="0")
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--score-windows", type=int, default=1)
    p.add_argument("--score-tokens", type=int, default=128, help="tokens of each window the options are scored on")
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=1)
    p.add_argument("--kd-seqlen", type=int, default=128)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--variants", default="uniform,per-layer,adapt")
    p.add_argument("--rounds", type=int, default=2, help="Adapt-Pruner rounds (variant adapt)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_per_layer.json"))
    args = p.parse_args()
    torch.set_num_threads(1)

    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.infra.latency import stopwatch
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_, shrink_layers_
    from prunekit.shrink.distill import DistillConfig, distill_, text_stream
    from prunekit.shrink.schedule import AdaptConfig, adapt_shrink_
    from prunekit.shrink.perlayer import layer_shapes_of

    axes = tuple(a for a in args.axes.split(",") if a)
    lm = load_model("smollm2-135m")
    dense = lm.model.eval()
    windows = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, args.seqlen)
    record = {"settings": vars(args), "threads": 1, "cores": os.cpu_count(), "runs": []}
    t = stopwatch()
    record["dense_perplexity"] = perplexity(dense, windows, progress=False)
    record["dense_eval"] = t()
    out = Path(args.results)

    def save() -> None:
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    for seed in [int(s) for s in args.seeds.split(",")]:
        calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, seed)
        for variant in args.variants.split(","):
            run: dict = {"seed": seed, "variant": variant, "load_before": os.getloadavg()}
            student = copy.deepcopy(dense)
            t = stopwatch()
            if variant == "adapt":  # cut and distillation interleaved: its own loop, reported at the end
                stream = text_stream(lm.tokenizer, "pydocs", args.kd_seqlen, seed)
                ad = adapt_shrink_(student, dense, args.target, calib, stream,
                                   AdaptConfig(rounds=args.rounds, axes=axes, score_windows=args.score_windows,
                                               score_tokens=args.score_tokens),
                                   DistillConfig(steps=args.kd_steps, batch_size=args.kd_batch, seqlen=args.kd_seqlen,
                                                 lr=args.kd_lr, seed=seed))
                run.update(shape=str(layer_shapes_of(student)), time=t(), report=ad.to_dict(),
                           layer_shapes=layer_shapes_of(student).to_dict(),
                           non_embedding_kept=ad.rounds[-1]["shrink"]["non_embedding_kept"],
                           perplexity_kd=perplexity(student, windows, progress=False), load_after=os.getloadavg())
                record["runs"].append(run)
                save()
                print(f"seed {seed} adapt ({args.rounds} rounds): {run['shape']}; kept {run['non_embedding_kept']:.1%}; "
                      f"perplexity after {ad.tokens:,} KD tokens {run['perplexity_kd']:.2f}; {run['time']}", flush=True)
                continue
            if variant == "uniform":
                rep = shrink_(student, args.target, calib, axes, candidates=args.candidates)
                run["shape"] = str(rep.shape_after)
            else:
                rep = shrink_layers_(student, args.target, calib, axes, score_on=calib[:args.score_windows, :args.score_tokens])
                run["shape"] = str(rep.after)
                run["dropped_blocks"] = rep.dropped_blocks
            run["search"] = t()
            run["report"] = rep.to_dict()
            run["non_embedding_kept"] = rep.non_embedding_kept
            run["layer_shapes"] = layer_shapes_of(student).to_dict()
            run["perplexity_cut"] = perplexity(student, windows, progress=False)
            record["runs"].append(run)
            save()  # the cut's figures are kept even if the distillation is cut short
            stream = text_stream(lm.tokenizer, "pydocs", args.kd_seqlen, seed)
            kd = distill_(student, dense, stream, steps=args.kd_steps, batch_size=args.kd_batch, seqlen=args.kd_seqlen,
                          lr=args.kd_lr, seed=seed, progress=False)
            run["distill"] = kd.to_dict()
            run["perplexity_kd"] = perplexity(student, windows, progress=False)
            run["load_after"] = os.getloadavg()
            save()
            print(f"seed {seed} {variant}: {run['shape']}; kept {rep.non_embedding_kept:.1%}; perplexity "
                  f"{run['perplexity_cut']:.2f} → {run['perplexity_kd']:.2f} after {kd.tokens:,} KD tokens; search "
                  f"{run['search']['wall_s']:.0f} s wall / {run['search']['cpu_s']:.0f} s CPU, KD {kd.seconds:.0f} s "
                  f"wall / {kd.cpu_seconds:.0f} s CPU", flush=True)
            del student


if __name__ == "__main__":
    main()
