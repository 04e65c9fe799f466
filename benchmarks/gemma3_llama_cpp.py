"""Gemma 3 270M in llama.cpp, dense against its vocabulary trimmed to Python's docs (and, with ``--width``, that
model also cut to ``--target`` along MLP neurons and depth, no distillation): each exported to GGUF (``--quant``,
q8_0 by default; the trimmed tokenizer's fields cut from the source GGUF's to the kept ids), then bytes on disk,
prefill and decode tokens/s with ``llama-bench`` (files interleaved in rounds, speed-ups paired per round against
dense, ``prunekit.metrics.engine_speed``) and ``llama-perplexity`` on held-out pydocs (the evaluation split; each
file with its own tokenizer, so the trimmed model scores the same text in its own, slightly longer, tokens — the
token counts are stored beside the perplexities). Results: ``benchmarks/results/gemma3_llama_cpp.{json,md}``.

    nice -n 10 python benchmarks/gemma3_llama_cpp.py --rounds 6 --ppl-chunks 8       # the README's figures
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "gemma3_llama_cpp.json"


def write(model, tok, path: Path, quant: str, keep: list[int] | None) -> dict:
    """The GGUF file (plan checked first; llama.cpp reads it back in the speed and perplexity runs)."""
    from prunekit.export import find_source_gguf
    from prunekit.export.gguf import plan_gguf, write_gguf
    from prunekit.infra.atomic import atomic_file

    plan = plan_gguf(model, tok, quant, find_source_gguf("gemma3-270m"), keep)
    with atomic_file(path) as tmp:
        report = write_gguf(model, plan, tmp)
    return {"path": str(path), "bytes": path.stat().st_size, "notes": list(report.notes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quant", default="q8_0")
    p.add_argument("--width", action="store_true", help="add the vocabulary + shrink_(--target) row (no KD)")
    p.add_argument("--target", default="params=0.8")
    p.add_argument("--axes", default="neurons,depth")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=8)
    p.add_argument("--work", default="/tmp/gemma3_llama_cpp")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()

    import torch

    from prunekit.datasets.text import calibration_windows, documents, split_documents
    from prunekit.infra.latency import stopwatch
    from prunekit.metrics.engine_speed import engine_speed, llama_perplexity
    from prunekit.models.hf import load_model
    from prunekit.shrink.vocab import config_token_ids, corpus_texts, plan_vocab, trim_vocab_

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spent, load0 = stopwatch(), os.getloadavg()[0]
    lm = load_model("gemma3-270m")
    tok = lm.tokenizer
    record: dict = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "stages": {}}
    files, params = {}, {}
    t = stopwatch()
    files["dense"] = write(lm.model, tok, work / f"gemma3-dense-{args.quant}.gguf", args.quant, None)
    params["dense"] = sum(p.numel() for p in lm.model.parameters())
    record["stages"]["export dense"] = t()
    t = stopwatch()
    trimmed = copy.deepcopy(lm.model)
    plan = plan_vocab(tok, corpus_texts("pydocs"), keep_ids=config_token_ids(trimmed.config))
    vocab = trim_vocab_(trimmed, tok, plan=plan)
    record["vocab"] = vocab.to_dict()
    record["stages"]["trim vocabulary"] = t()
    keep = plan.kept.tolist()
    t = stopwatch()
    files["vocab"] = write(trimmed, vocab.tokenizer, work / f"gemma3-vocab-{args.quant}.gguf", args.quant, keep)
    params["vocab"] = sum(p.numel() for p in trimmed.parameters())
    record["stages"]["export vocab"] = t()
    if args.width:
        from prunekit.shrink import shrink_

        t = stopwatch()
        calib = calibration_windows(vocab.tokenizer, "pydocs", nsamples=8, seqlen=256, seed=0, default=True,
                                    say=lambda s: None)
        report = shrink_(trimmed, args.target, calib, axes=args.axes.split(","), candidates=1, progress=False)
        record["shrink"] = report.to_dict()
        files["vocab+width"] = write(trimmed, vocab.tokenizer, work / f"gemma3-vocab-width-{args.quant}.gguf",
                                     args.quant, keep)
        params["vocab+width"] = sum(p.numel() for p in trimmed.parameters())
        record["stages"]["shrink + export"] = t()
    del trimmed, lm
    docs = split_documents(documents("pydocs", default=True, say=lambda s: None), "evaluation")
    text = work / "heldout-pydocs.txt"
    text.write_text("\n\n".join(d.text for d in docs)[:400_000])
    t = stopwatch()
    speed = engine_speed({n: f["path"] for n, f in files.items()}, rounds=args.rounds, threads=args.threads,
                         progress=True)
    record["stages"]["llama-bench"] = t()
    t = stopwatch()
    ppl = {n: llama_perplexity(f["path"], text, ctx=args.ppl_ctx, chunks=args.ppl_chunks,
                               threads=args.threads).to_dict() for n, f in files.items()}
    record["stages"]["llama-perplexity"] = t()
    sp = speed.to_dict()
    rows = []
    for n, f in files.items():
        m, up = sp["models"][n], sp["speedups"].get(n, {})
        rows.append({"model": n, "params": params[n], "bytes": f["bytes"],
                     "prefill_tokens_per_s": m["prefill_tokens_per_s"], "decode_tokens_per_s": m["decode_tokens_per_s"],
                     "decode_speedup": up.get("decode", {}).get("median", 1.0),
                     "decode_speedup_iqr": up.get("decode", {}).get("iqr", 0.0),
                     "prefill_speedup": up.get("prefill", {}).get("median", 1.0),
                     "noisy": m["decode"]["noisy"] or m["prefill"]["noisy"],
                     "why": sorted(set(m["decode"]["why"]) | set(m["prefill"]["why"])),
                     "perplexity": ppl[n]["perplexity"], "perplexity_stderr": ppl[n]["stderr"]})
    record.update(rows=rows, files=files, speed=sp, perplexity=ppl, total=spent(),
                  load={"start": load0, "end": os.getloadavg()[0]}, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| model | parameters | MB on disk | prefill tok/s | decode tok/s | decode speed-up (paired) | "
             "perplexity (llama.cpp) | flag |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['bytes'] / 1e6:.1f} | "
                     f"{r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['decode_speedup']:.2f}× ±{r['decode_speedup_iqr']:.2f} | "
                     f"{r['perplexity']:.2f} ±{r['perplexity_stderr']:.2f} | {'; '.join(r['why'])} |")
    lines.append(f"\n{args.rounds} interleaved llama-bench rounds, {args.threads} thread(s), {args.quant}; perplexity: "
                 f"llama-perplexity, {args.ppl_chunks} × {args.ppl_ctx} tokens of held-out pydocs; wall "
                 f"{record['total']['wall_s'] / 60:.0f} min, CPU {record['total']['cpu_s'] / 60:.0f} min, load "
                 f"{load0:.1f} → {record['load']['end']:.1f}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
