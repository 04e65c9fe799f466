"""Residual-width pruning alone on SmolLM2-135M: hidden_size 576 → 432 (25% of the channels) by Minitron's
activation importance with and without the norm-gain correction, and by weight magnitude; perplexity on
held-out Python docs (16 × 256 tokens), calibration 16 × 256 tokens (seed 0), one thread, no recovery.

    nice -n 10 python benchmarks/shrink_width_importance.py

Writes benchmarks/results/shrink_width_importance.json.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model
from prunekit.shrink.width import prune_hidden_

OUT = Path(__file__).resolve().parent / "results" / "shrink_width_importance.json"


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    cal = calibration_windows(lm.tokenizer, "pydocs", 16, 256, 0, say=lambda t: None)
    ev = eval_windows(lm.tokenizer, "pydocs", 16, 256, say=lambda t: None)
    rows = [{"variant": "dense", "hidden": 576, "perplexity": perplexity(lm.model, ev, progress=False)}]
    for rescale, importance in [(True, "activation"), (False, "activation"), (True, "magnitude")]:
        model = copy.deepcopy(lm.model)
        t0 = time.perf_counter()
        prune_hidden_(model, 432, importance=importance, calibration=cal, rescale_norms=rescale)
        rows.append({"variant": f"{importance}{'' if rescale else ', no norm rescaling'}", "hidden": 432,
                     "perplexity": perplexity(model, ev, progress=False), "prune_seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"model": "smollm2-135m", "calibration": "pydocs 16x256 seed 0",
                               "evaluation": "pydocs held-out 16x256", "threads": 1, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
