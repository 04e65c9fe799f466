"""A decoder in llama.cpp, dense against its vocabulary trimmed to Python's docs — and, with ``--student DIR``,
a shrunk and distilled model of the same family before and after the same trim (a student distilled in the cut
vocabulary, whose folder holds ``prunekit-vocab.json``, gives the second row only); with ``--width``, the trimmed
dense model also cut to ``--target`` (no distillation). Each model is exported to GGUF at every ``--quants``
type (the trimmed tokenizer's fields cut from the source GGUF's to the kept ids), then bytes on disk, prefill and
decode tokens/s with ``llama-bench`` (the files of one type interleaved in rounds, speed-ups paired per round
against the dense file of that type, ``prunekit.metrics.engine_speed``) and ``llama-perplexity`` on held-out
pydocs (the evaluation split; each file with its own tokenizer, so a trimmed model scores the same text in its
own, slightly longer, tokens — the token counts are stored beside the perplexities, and the trimmed dense model
is the like-for-like baseline of a trimmed student). Results: ``--results`` (``.json`` and ``.md``).

    nice -n 10 python benchmarks/vocab_llama_cpp.py --model gemma3-270m --width --rounds 6 --ppl-chunks 8 \
        --results benchmarks/results/gemma3_llama_cpp.json                  # the README's Gemma 3 figures
    python benchmarks/vocab_llama_cpp.py --model smollm2-135m --student …/student --quants f16,q8_0 \
        --rounds 8 --ppl-chunks 128                                         # the shrunk SmolLM2's figures
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


def write(model, tok, name: str, path: Path, quant: str, keep: list[int] | None) -> dict:
    """The GGUF file (plan checked first; llama.cpp reads it back in the speed and perplexity runs)."""
    from prunekit.export import find_source_gguf
    from prunekit.export.gguf import plan_gguf, write_gguf
    from prunekit.infra.atomic import atomic_file

    plan = plan_gguf(model, tok, quant, find_source_gguf(name), keep)
    with atomic_file(path) as tmp:
        report = write_gguf(model, plan, tmp)
    return {"path": str(path), "bytes": path.stat().st_size, "notes": list(report.notes)}


def table(record: dict) -> str:
    """The markdown table of every row, with the budget line under it."""
    a = record["args"]
    lines = ["| model | type | parameters | MB on disk | prefill tok/s | decode tok/s | decode speed-up (paired) | "
             "perplexity (llama.cpp) | held-out text in tokens | flag |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['model']} | {r['quant']} | {r['params'] / 1e6:.1f} M | {r['bytes'] / 1e6:.1f} | "
                     f"{r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['decode_speedup']:.2f}× ±{r['decode_speedup_iqr']:.2f} | "
                     f"{r['perplexity']:.2f} ±{r['perplexity_stderr']:.2f} | {r['text_tokens']:,} | "
                     f"{'; '.join(r['why'])} |")
    lines.append(f"\n{a['rounds']} interleaved llama-bench rounds per type, {a['threads']} thread(s), prefill 128 / "
                 f"decode 32 tokens; perplexity: llama-perplexity, {a['ppl_chunks']} × {a['ppl_ctx']} tokens of "
                 f"held-out pydocs (each file's own tokens); wall {record['total']['wall_s'] / 60:.0f} min, CPU "
                 f"{record['total']['cpu_s'] / 60:.0f} min, load {record['load']['start']:.1f} → "
                 f"{record['load']['end']:.1f}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", help="the dense model (a built-in name with a GGUF source)")
    p.add_argument("--student", default=None, metavar="DIR",
                   help="a shrunk (and distilled) folder of the same family: adds 'student' and 'student+vocab'")
    p.add_argument("--quants", "--quant", default="q8_0", help="comma-separated GGUF types (f16, q8_0, q4_0)")
    p.add_argument("--width", action="store_true", help="add the vocabulary + shrink_(--target) row (no KD)")
    p.add_argument("--target", default="params=0.8")
    p.add_argument("--axes", default="neurons,depth")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=8)
    p.add_argument("--work", default="/tmp/vocab_llama_cpp")
    p.add_argument("--results", default=None, help="default: benchmarks/results/vocab_llama_cpp_<model>.json")
    args = p.parse_args()
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"vocab_llama_cpp_{args.model}.json")

    import torch

    from prunekit.datasets.text import calibration_windows, documents, split_documents
    from prunekit.infra.latency import stopwatch
    from prunekit.metrics.engine_speed import engine_speed, llama_perplexity
    from prunekit.models.hf import load_model
    from prunekit.export.gguf_vocab import kept_token_ids
    from prunekit.shrink.vocab import config_token_ids, corpus_texts, plan_vocab, trim_vocab_

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spent, load0 = stopwatch(), os.getloadavg()[0]
    lm = load_model(args.model)
    tok = lm.tokenizer
    record: dict = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "stages": {}}
    models: dict[str, tuple] = {"dense": (lm.model, tok, None)}
    t = stopwatch()
    plan = plan_vocab(tok, corpus_texts("pydocs"), keep_ids=config_token_ids(lm.model.config))
    keep = plan.kept.tolist()
    trimmed = copy.deepcopy(lm.model)
    vocab = trim_vocab_(trimmed, tok, plan=plan)
    record["vocab"] = vocab.to_dict()
    models["vocab"] = (trimmed, vocab.tokenizer, keep)
    record["stages"]["trim vocabulary"] = t()
    if args.student:
        student = load_model(args.student).model
        if type(student) is not type(lm.model):
            raise SystemExit(f"--student is a {type(student).__name__}, the dense model a {type(lm.model).__name__}")
        record["student"] = {"folder": args.student, "config": {k: getattr(student.config, k) for k in
                             ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                              "num_hidden_layers")}}
        cut_before = kept_token_ids(args.student)
        if cut_before is None:
            models["student"] = (student, tok, None)
            small = copy.deepcopy(student)
            trim_vocab_(small, tok, plan=plan)
            models["student+vocab"] = (small, vocab.tokenizer, keep)
        else:  # distilled in a cut vocabulary (shrink_kd_budget.py --vocab): no full-vocabulary student exists
            from transformers import AutoTokenizer

            record["student"]["vocab_cut_before_distillation"] = len(cut_before)
            models["student+vocab"] = (student, AutoTokenizer.from_pretrained(args.student), cut_before)
    if args.width:
        from prunekit.shrink import shrink_

        t = stopwatch()
        cut = copy.deepcopy(trimmed)
        calib = calibration_windows(vocab.tokenizer, "pydocs", nsamples=8, seqlen=256, seed=0, default=True,
                                    say=lambda s: None)
        report = shrink_(cut, args.target, calib, axes=args.axes.split(","), candidates=1, progress=False)
        record["shrink"] = report.to_dict()
        models["vocab+width"] = (cut, vocab.tokenizer, keep)
        record["stages"]["shrink"] = t()
    params = {n: sum(p.numel() for p in m.parameters()) for n, (m, _, _) in models.items()}
    files: dict[str, dict[str, dict]] = {}
    t = stopwatch()
    for q in quants:
        files[q] = {n: write(m, tk, args.model, work / f"{args.model}-{n.replace('+', '-')}-{q}.gguf", q, kp)
                    for n, (m, tk, kp) in models.items()}
    record["stages"]["export"] = t()
    docs = split_documents(documents("pydocs", default=True, say=lambda s: None), "evaluation")
    text = work / "heldout-pydocs.txt"
    text.write_text("\n\n".join(d.text for d in docs)[:400_000])
    # the held-out text's length in each model's tokens (a trimmed tokenizer cuts words it lost into more pieces)
    text_tokens = {n: len(tk(text.read_text(), add_special_tokens=False)["input_ids"]) for n, (_, tk, _) in models.items()}
    record["text_tokens"] = text_tokens
    del models, trimmed, lm
    rows, speeds, ppls = [], {}, {}
    for q in quants:  # every timing first, while the machine is as quiet as it will be; the perplexities after
        t = stopwatch()
        speeds[q] = engine_speed({n: f["path"] for n, f in files[q].items()}, rounds=args.rounds,
                                 threads=args.threads, progress=True).to_dict()
        record["stages"][f"llama-bench {q}"] = t()
    for q in quants:
        t = stopwatch()
        ppl = {n: llama_perplexity(f["path"], text, ctx=args.ppl_ctx, chunks=args.ppl_chunks,
                                   threads=args.threads).to_dict() for n, f in files[q].items()}
        record["stages"][f"llama-perplexity {q}"] = t()
        sp, ppls[q] = speeds[q], ppl
        for n, f in files[q].items():
            m, up = sp["models"][n], sp["speedups"].get(n, {})
            rows.append({"model": n, "quant": q, "params": params[n], "bytes": f["bytes"],
                         "prefill_tokens_per_s": m["prefill_tokens_per_s"],
                         "decode_tokens_per_s": m["decode_tokens_per_s"],
                         "decode_speedup": up.get("decode", {}).get("median", 1.0),
                         "decode_speedup_iqr": up.get("decode", {}).get("iqr", 0.0),
                         "prefill_speedup": up.get("prefill", {}).get("median", 1.0),
                         "noisy": m["decode"]["noisy"] or m["prefill"]["noisy"],
                         "why": sorted(set(m["decode"]["why"]) | set(m["prefill"]["why"])),
                         "perplexity": ppl[n]["perplexity"], "perplexity_stderr": ppl[n]["stderr"],
                         "text_tokens": text_tokens[n]})
    record.update(rows=rows, files=files, speed=speeds, perplexity=ppls, total=spent(),
                  load={"start": load0, "end": os.getloadavg()[0]},
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1, default=str) + "\n")
    results.with_suffix(".md").write_text(table(record) + "\n")
    print(table(record))


if __name__ == "__main__":
    main()
