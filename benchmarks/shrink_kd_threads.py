"""Distillation throughput on this machine's threads: a distilled student folder trained on for 8 steps of
``--batch`` × ``--seqlen`` tokens from the dense SmolLM2-135M (KD + 0.5·CE, bf16 autocast by default, the stored long
runs' recipe at a tiny learning rate), the first 2 steps not counted; tokens per wall second and per CPU second, for
each ``--threads`` value in turn. With ``--vocab SOURCE`` every row is also run with student and teacher cut to
the tokens of SOURCE's calibration split (one plan, as ``prunekit shrink --vocab`` cuts them before its
distillation), the two interleaved ``--repeats`` times. Results: ``--results``.

    python benchmarks/shrink_kd_threads.py …/student --threads 1 2
    python benchmarks/shrink_kd_threads.py …/student --threads 2 --vocab pydocs --repeats 2 \
        --results benchmarks/results/shrink_kd_threads_vocab.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _timed(lm, args, plan) -> dict:
    """Steps 3–8 of a distillation of the student from the dense model (both cut to ``plan`` when given)."""
    import copy

    from prunekit.models.hf import load_model
    from prunekit.shrink.distill import distill_, text_stream
    from prunekit.shrink.vocab import trim_vocab_

    student, teacher, tok = load_model(args.student).model, lm.model, lm.tokenizer
    if plan is not None:
        teacher = copy.deepcopy(lm.model)
        trim_vocab_(teacher, tok, plan=plan)
        trim_vocab_(student, tok, plan=plan)
        tok = plan.tokenizer
    stamps: list[tuple[float, float]] = []
    distill_(student, teacher.eval(), text_stream(tok, "pydocs", args.seqlen, seed=7), steps=8,
             batch_size=args.batch, seqlen=args.seqlen, lr=1e-5, ce_weight=0.5, precision=args.precision,
             progress=False, on_step=lambda s: stamps.append((time.perf_counter(), time.process_time())))
    tokens = 6 * args.batch * args.seqlen
    wall, cpu = stamps[-1][0] - stamps[1][0], stamps[-1][1] - stamps[1][1]
    return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", help="a shrunk (distilled) SmolLM2 folder")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--vocab", default=None, metavar="SOURCE",
                   help="also time student and teacher with the vocabulary cut to SOURCE's calibration tokens")
    p.add_argument("--repeats", type=int, default=1, help="rounds of (full, cut) per thread count")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_kd_threads.json"))
    args = p.parse_args()

    import torch

    from prunekit.models.hf import load_model

    lm = load_model("smollm2-135m")
    plan = None
    if args.vocab:
        from prunekit.shrink.vocab import config_token_ids, corpus_texts, plan_vocab

        plan = plan_vocab(lm.tokenizer, corpus_texts(args.vocab), keep_ids=config_token_ids(lm.model.config))
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for _ in range(args.repeats):
            for cut in ([False, True] if plan is not None else [False]):
                rows.append({"threads": threads, "vocab": len(plan.kept) if cut else lm.model.config.vocab_size,
                             **_timed(lm, args, plan if cut else None)})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.results)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "args": vars(args), "rows": rows,
                               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                       time.gmtime())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
