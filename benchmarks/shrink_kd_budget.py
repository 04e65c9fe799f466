"""How much distillation the shrunk SmolLM2-135M needs: shrink to ``--target`` (the width-keeping shape of the
llama.cpp speed table by default: heads, MLP neurons and depth cut, the residual width kept), then distil from
the unpruned model on the calibration split of Python's docs for ``--steps`` × ``--batch`` × ``--seqlen``
tokens, with perplexity on held-out documents (the evaluation split, never distilled on) measured every
``--eval-every`` steps. The curve, the budget, wall and CPU time and peak memory go to ``--results``; the final
student is written as a Hugging Face folder and an f16 GGUF under ``--work`` for
``benchmarks/llama_cpp_speed.py --shrunk-gguf`` to time in llama.cpp.

The run is resumable: it checkpoints every ``--checkpoint-every`` steps (``prunekit.shrink.distill``), and
``--resume`` continues a killed run from its last checkpoint on the same text; the curve is kept in the
results file as it grows.

    nice -n 5 python benchmarks/shrink_kd_budget.py --steps 160 --ce-weight 0.5 --eval-every 20   # the stored run
    python benchmarks/shrink_kd_budget.py ... --resume                                  # after a kill

``--continue-from DIR`` starts from a student a finished run saved (its ``work/student`` folder) instead of a
fresh cut: a second distillation with its own warm-up and cosine decay, on the windows after the ones the
first run read (``--skip-windows``, by default the first run's steps × batch from its results file,
``--first-results``), so no window is seen twice; the record keeps the first run's tokens and time beside
this one's.

    python benchmarks/shrink_kd_budget.py --continue-from /tmp/shrink_kd_budget/student --steps 80 --lr 1.5e-4 \
        --ce-weight 0.5 --eval-every 20 --work /tmp/shrink_kd_continued --results benchmarks/results/shrink_kd_continued.json

``--vocab SOURCE`` cuts the vocabulary of student *and* teacher to the tokens SOURCE's calibration split uses
(``prunekit.shrink.vocab``, one plan for both) before the distillation, as ``prunekit shrink --vocab`` does: the
LM head and both softmaxes shrink (SmolLM2 on pydocs: 49,152 → 23,031 rows), so every step is cheaper; the text
is read in the trimmed tokenizer's ids and the held-out perplexity is measured in its tokens, beside the
trimmed dense model's (the like-for-like baseline) and the full dense model's. The student folder then holds
``prunekit-vocab.json`` (the source ids kept), which ``benchmarks/vocab_llama_cpp.py --student`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "shrink_kd_budget.json"


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` whole or not at all (a kill mid-write keeps the previous file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def _spent_total(first: dict) -> dict | None:
    """Wall and CPU seconds of a finished run and every run it continued (its ``final`` totals when chained)."""
    final = first.get("final") or {}
    if "wall_s_total" in final:
        return {"wall_s": final["wall_s_total"], "cpu_s": final["cpu_s_total"]}
    return first.get("spent")


def _cut_to_grid_shape(model, target: str, calib, axes: list[str], index: int) -> dict:
    """Cut ``model`` in place to the ``index``-th shape of the uniform search's grid under ``target``."""
    from prunekit.shrink.api import apply_shape_, plan_shrink
    from prunekit.shrink.budget import non_embedding_params

    t, _, counter, dense, found = plan_shrink(model, target, calib, axes)
    if not 0 <= index < len(found.shapes):
        raise SystemExit(f"--grid-index {index}: the grid under {target} along {','.join(axes)} has "
                         f"{len(found.shapes)} shapes (0..{len(found.shapes) - 1})")
    shape = found.shapes[index]
    before = non_embedding_params(model)
    apply_shape_(model, shape, calib)
    return {"grid_index": index, "shape_before": str(dense), "shape_after": str(shape),
            "non_embedding_kept": non_embedding_params(model) / before,
            "grid": [str(s) for s in found.shapes]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--axes", default="heads,neurons,depth", help="the shrink axes (hidden kept by default)")
    p.add_argument("--candidates", type=int, default=1,
                   help="shapes scored on calibration loss (1: the first under budget, the shape the llama.cpp table timed)")
    p.add_argument("--grid-index", type=int, default=None, metavar="K",
                   help="cut to the K-th shape (0-based) of the search's grid under the target instead of shrink_'s "
                        "pick (e.g. --axes neurons,depth --grid-index 2: MLP 768, 27 blocks), to compare shapes")
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows for the shrink's importance")
    p.add_argument("--steps", type=int, default=260)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ce-weight", type=float, default=0.0, help="add the text's cross-entropy × this to the KL")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the distillation's products: fp32 or bf16 autocast (DistillConfig.precision)")
    p.add_argument("--eval-every", type=int, default=26)
    p.add_argument("--eval-windows", type=int, default=64,
                   help="held-out windows of --seqlen tokens per evaluation (the split's first ones: 8 × 512 is "
                        "mostly one document, too narrow a sample — the stored runs used 8)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/shrink_kd_budget")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--continue-from", default=None, metavar="DIR", help="a saved student folder to distil further")
    p.add_argument("--first-results", default=str(RESULTS), help="the results file of the run that saved it")
    p.add_argument("--skip-windows", type=int, default=None, help="windows of the stream to skip (default: the first run's)")
    p.add_argument("--vocab", default=None, metavar="SOURCE",
                   help="cut student and teacher to the tokens of SOURCE's calibration split before distilling")
    args = p.parse_args()

    import torch

    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.export import export
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_
    from prunekit.shrink.distill import DistillConfig, distill_, load_student, text_stream

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work, results = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint"
    lm = load_model("smollm2-135m")
    tok, teacher = lm.tokenizer, lm.model.eval()
    heldout = eval_windows(tok, "pydocs", args.eval_windows, args.seqlen, default=True, say=lambda t: None)
    dense_full, plan = None, None
    if args.vocab and args.continue_from:
        raise SystemExit("--vocab cuts a fresh student and its teacher; --continue-from distils a saved one further")
    if args.vocab:  # the full model's perplexity first; the student is then copied from the cut teacher
        from prunekit.shrink.vocab import config_token_ids, corpus_texts, plan_vocab, trim_vocab_

        dense_full = perplexity(teacher, heldout, progress=False)
        plan = plan_vocab(tok, corpus_texts(args.vocab), keep_ids=config_token_ids(teacher.config))
        trim_vocab_(teacher, tok, plan=plan)
        tok = plan.tokenizer
        heldout = eval_windows(tok, "pydocs", args.eval_windows, args.seqlen, default=True, say=lambda t: None)
    cfg = DistillConfig(steps=args.steps, batch_size=args.batch, seqlen=args.seqlen, lr=args.lr, seed=args.seed,
                        checkpoint_every=args.checkpoint_every, ce_weight=args.ce_weight, precision=args.precision)
    run = {"target": args.target, "axes": args.axes, "seed": args.seed, "config": cfg.model_dump()}
    skip = 0
    if args.resume:
        record = json.loads(results.read_text())
        skip = record.get("continued_from", {}).get("skipped_windows", 0)
        student = load_student(ckpt)
    else:
        if args.continue_from:
            first = json.loads(Path(args.first_results).read_text())
            fc = first["config"]
            # a chain of continuations: the first run's own skipped windows and tokens come before its steps
            prior = first.get("continued_from", {})
            read = prior.get("skipped_windows", 0) + fc["steps"] * fc["batch_size"]
            skip = args.skip_windows if args.skip_windows is not None else read
            if fc["seqlen"] != args.seqlen:
                raise SystemExit(f"--seqlen {args.seqlen} differs from the first run's {fc['seqlen']}: the skipped "
                                 "windows would not line up")
            student = load_model(args.continue_from).model  # a folder from_pretrained reads (the first run saved it)
            origin = {"continued_from": {"student": args.continue_from, "results": args.first_results,
                                         "tokens": (first.get("final") or {}).get(
                                             "tokens_total", fc["steps"] * fc["batch_size"] * fc["seqlen"]),
                                         "spent": _spent_total(first), "final": first.get("final"),
                                         "skipped_windows": skip}}
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            calib = calibration_windows(tok, "pydocs", nsamples=args.nsamples, seqlen=256, seed=args.seed,
                                        default=True, say=lambda t: None)
            import copy

            student = copy.deepcopy(teacher)
            if args.grid_index is None:
                report = shrink_(student, args.target, calib, axes=args.axes.split(","),
                                 candidates=args.candidates, progress=True)
                print(report, flush=True)
                done = {"report": report.to_dict()}
            else:
                done = _cut_to_grid_shape(student, args.target, calib, args.axes.split(","), args.grid_index)
                print(done, flush=True)
            if plan is not None:  # the student is a copy of the cut teacher: cut alike, calibrated in its ids
                done["vocab"] = {"source": args.vocab, "before": plan.vocab_before, "after": len(plan.kept)}
            origin = {"shrink": {**done, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}}
        record = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "config": cfg.model_dump(),
                  **origin, "dense_perplexity": perplexity(teacher, heldout, progress=False),
                  **({"dense_full_vocab_perplexity": dense_full} if dense_full is not None else {}),
                  "curve": [], "machine": {"cpus": os.cpu_count(), "threads": args.threads}}
        record["curve"].append({"step": 0, "tokens": 0, "perplexity": perplexity(student, heldout, progress=False),
                                "wall_s": 0.0, "cpu_s": 0.0})
        write_json(results, record)
        print(f"dense {record['dense_perplexity']:.2f}, student before KD {record['curve'][0]['perplexity']:.2f}",
              flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    base = dict(record.get("spent", {"wall_s": 0.0, "cpu_s": 0.0}))

    def on_step(step: int) -> None:
        if step % args.eval_every and step != args.steps:
            return
        student.eval()
        ppl = perplexity(student, heldout, progress=False)
        student.train()
        record["curve"].append({"step": step, "tokens": step * args.batch * args.seqlen, "perplexity": ppl,
                                "wall_s": base["wall_s"] + time.perf_counter() - start,
                                "cpu_s": base["cpu_s"] + time.process_time() - cpu,
                                "load": os.getloadavg()[0]})
        record["spent"] = {"wall_s": record["curve"][-1]["wall_s"], "cpu_s": record["curve"][-1]["cpu_s"]}
        write_json(results, record)
        print(f"step {step}: held-out perplexity {ppl:.2f} (dense {record['dense_perplexity']:.2f})", flush=True)

    windows = text_stream(tok, "pydocs", args.seqlen, seed=args.seed)
    if skip:
        import itertools

        stream = windows
        windows = type("Skipped", (), {"__iter__": lambda self: itertools.islice(iter(stream), skip, None)})()
    kd = distill_(student, teacher, windows, cfg, checkpoint=ckpt, resume=args.resume, run=run, on_step=on_step)
    record.setdefault("kd_reports", []).append(kd.to_dict() | {"losses": kd.losses[-20:]})
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    student.eval()
    folder = work / "student"
    student.save_pretrained(folder)
    tok.save_pretrained(folder)
    if plan is not None:  # the source ids kept, for a GGUF that cuts the source's tokenizer alike
        from prunekit.export.gguf_vocab import KEPT_FILE

        (folder / KEPT_FILE).write_text(json.dumps({"kept": plan.kept.tolist()}) + "\n")
    else:
        gguf = work / "smollm2-shrunk-kd-f16.gguf"
        rep = export(student, tok, gguf, to="gguf", quant="f16", source="smollm2-135m", overwrite=True)
        record["gguf"] = {"path": str(gguf), "bytes": rep.bytes}
    final = record["curve"][-1]["perplexity"]
    record["final"] = {"perplexity": final, "dense": record["dense_perplexity"],
                       "ratio": final / record["dense_perplexity"],
                       "within_15_percent": bool(final <= 1.15 * record["dense_perplexity"]),
                       "tokens": args.steps * args.batch * args.seqlen}
    if dense_full is not None:  # the student in the cut vocabulary's tokens against the full model in its own
        record["final"]["ratio_to_full_vocab"] = final / dense_full
    if "continued_from" in record:
        first_spent = record["continued_from"].get("spent") or {}
        record["final"]["tokens_total"] = record["final"]["tokens"] + record["continued_from"]["tokens"]
        record["final"]["wall_s_total"] = record["spent"]["wall_s"] + first_spent.get("wall_s", 0.0)
        record["final"]["cpu_s_total"] = record["spent"]["cpu_s"] + first_spent.get("cpu_s", 0.0)
    write_json(results, record)
    print(json.dumps(record["final"], indent=1))
    assert math.isfinite(final)


if __name__ == "__main__":
    main()
