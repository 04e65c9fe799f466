"""Every shape of the uniform search's band scored: SmolLM2-135M (or ``--model``) cut to each grid shape under
``--target`` along each set of ``--axes`` (the search's band: at most the budget, at least ``slack`` below it),
scored by the search's own criterion — next-token loss on the calibration windows right after the cut, no
distillation — in the search's order, with the rank the default ``candidates``
(``shrink.search.DEFAULT_CANDIDATES``) would have scored up to. Results: ``--results`` (.json).

    python benchmarks/shrink_band_scores.py --axes "heads,neurons,depth;neurons,depth"
    python benchmarks/shrink_band_scores.py --model gemma3-270m --axes "heads,neurons,depth" --results …
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a built-in model name or a path (gemma3-270m, ...)")
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--axes", default="heads,neurons,depth;neurons,depth")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_band_scores.json"))
    args = p.parse_args(argv)

    import torch

    from prunekit.datasets.text import calibration_windows
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_
    from prunekit.shrink.api import DEFAULT_CANDIDATES

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    calib = calibration_windows(lm.tokenizer, "pydocs", nsamples=args.nsamples, seqlen=256, seed=args.seed,
                                default=True, say=lambda t: None)
    record = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "default_candidates": DEFAULT_CANDIDATES,
              "bands": []}
    for axes in (a.split(",") for a in args.axes.split(";") if a):
        model, start = copy.deepcopy(lm.model), time.process_time()
        rep = shrink_(model, args.target, calib, axes=axes, candidates=1000)
        rows = [{"rank": i, "shape": str(c.shape), "kept": c.kept, "loss": c.loss,
                 "perplexity": None if c.loss is None else math.exp(c.loss)} for i, c in enumerate(rep.candidates)]
        default = min((r for r in rows[:DEFAULT_CANDIDATES] if r["loss"] is not None), key=lambda r: r["loss"],
                      default=rows[0])
        record["bands"].append({"axes": axes, "best": str(rep.shape_after), "best_of_default": default["shape"],
                                "cpu_s": time.process_time() - start, "candidates": rows})
        print(",".join(axes), f"best of all {len(rows)}: {rep.shape_after}; of the first {DEFAULT_CANDIDATES}: "
              f"{default['shape']}", flush=True)
        for r in rows:
            ppl = "" if r["perplexity"] is None else f"{r['perplexity']:.1f}"
            print(f"  {r['rank']:2d}  {r['shape']:<50} kept {r['kept']:.3f}  calibration perplexity {ppl}")
        del model
    Path(args.results).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
