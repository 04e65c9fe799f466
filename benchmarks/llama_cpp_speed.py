"""SmolLM2-135M in llama.cpp: dense against shrunk to params=0.6 (with a small logit-distillation budget) and
against Wanda's masks (50% unstructured, 2:4), each exported to GGUF f16, q8_0 and q4_0, measured in llama.cpp:
prefill and decode tokens/s (llama-bench, one thread, the files of one type interleaved in rounds, paired
speed-up over dense with its spread), bytes on disk, and perplexity with llama-perplexity on held-out Python
docs. Results: benchmarks/results/llama_cpp_speed.json (+ .md table, + the Pareto plot .png).

    nice -n 10 python benchmarks/llama_cpp_speed.py                 # the short run stored here (~25 min, 2 busy cores)
    nice -n 10 python benchmarks/llama_cpp_speed.py --rounds 10 --ppl-chunks 32 --kd-steps 200   # the quiet-machine run
    python benchmarks/llama_cpp_speed.py --plot-only                # redraw the plot from the stored JSON

Needs llama.cpp's tools (``make llama-cpp``: llama-bench, llama-perplexity, llama-simple). The quantized files
are written with the ``gguf`` package's q8_0 / q4_0 (every 2-D tensor, token embedding included), not with
llama-quantize's mixes. The shrink runs in this process with prunekit.shrink.shrink_ (activation importance,
``--candidates`` shapes scored on calibration loss) and is distilled from the unpruned model with
prunekit.shrink.distill_ for ``--kd-steps`` × ``--kd-batch`` × ``--kd-seqlen`` tokens (0 steps: no KD).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "llama_cpp_speed.json"


def heldout_text(path: Path, chars: int) -> Path:
    """The evaluation split of Python's docs (the documents prunekit never calibrates or distils on)."""
    from prunekit.datasets.text import documents, split_documents

    docs = split_documents(documents("pydocs", default=True, say=lambda t: None), "evaluation")
    text = "\n\n".join(d.text for d in docs)[:chars]
    path.write_text(text)
    return path


def build_models(args: argparse.Namespace, log: dict) -> dict:
    """name → (model, tokenizer); the shrunk and masked ones made here."""
    import torch

    import prunekit as pk
    from prunekit.datasets.text import calibration_windows
    from prunekit.models.hf import load_model
    from prunekit.shrink import shrink_
    from prunekit.shrink.distill import distill_, text_stream

    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    calib = calibration_windows(tok, "pydocs", nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                default=True, say=lambda t: None)
    models = {"dense": lm.model}
    if args.shrunk_gguf:
        from transformers import AutoModelForCausalLM

        path = Path(args.shrunk_gguf)
        shrunk = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        log["shrink"] = {"from": str(path), "note": args.build_note}
        log["kd"] = {"tokens": args.kd_steps * args.kd_batch * args.kd_seqlen, "note": args.build_note}
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        shrunk = copy.deepcopy(lm.model)
        report = shrink_(shrunk, args.target, calib, axes=args.shrink_axes.split(","), candidates=args.candidates,
                         progress=True)
        log["shrink"] = {"report": report.to_dict(), "wall_s": time.perf_counter() - t0,
                         "cpu_s": time.process_time() - c0}
        print(report, flush=True)
    if not args.shrunk_gguf and args.kd_steps:
        t0, c0 = time.perf_counter(), time.process_time()
        windows = text_stream(tok, "pydocs", args.kd_seqlen, seed=args.seed)
        kd = distill_(shrunk, lm.model, windows, steps=args.kd_steps, batch_size=args.kd_batch, seqlen=args.kd_seqlen,
                      lr=args.kd_lr, seed=args.seed, progress=True)
        log["kd"] = {"report": kd.to_dict(), "tokens": args.kd_steps * args.kd_batch * args.kd_seqlen,
                     "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    elif not args.shrunk_gguf:
        log["kd"] = {"tokens": 0, "note": "no distillation"}
    shrunk.eval()
    models["shrunk"] = shrunk
    for name, kw in (("wanda50", {"sparsity": 0.5}), ("wanda2:4", {"pattern": "2:4"})):
        if name not in args.methods:
            continue
        t0 = time.perf_counter()
        m = copy.deepcopy(lm.model)
        pk.prune_(m, method="wanda", calibration=calib, **kw)
        pk.finalize_(m)
        log[name] = {"wall_s": time.perf_counter() - t0}
        models[name] = m
    return {n: (m, tok) for n, m in models.items() if n in args.methods}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--candidates", type=int, default=1)
    p.add_argument("--shrink-axes", default="heads,neurons,hidden,depth",
                   help="axes shrink_ may cut (leave out 'hidden' to keep the residual width a multiple of 32)")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=2)
    p.add_argument("--kd-seqlen", type=int, default=128)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="dense,shrunk,wanda50,wanda2:4")
    p.add_argument("--quants", default="f16,q8_0,q4_0")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=8)
    p.add_argument("--work", default="/tmp/llama_cpp_speed", help="folder for the GGUF files (kept)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--plot-only", action="store_true", help="redraw the Pareto plot from --results and stop")
    p.add_argument("--shrunk-gguf", help="take the shrunk (+KD) model from this GGUF file (an earlier run's f16 "
                                         "export) instead of shrinking and distilling again")
    p.add_argument("--build-note", default="", help="with --shrunk-gguf: how that model was made (stored)")
    p.add_argument("--reuse", action="store_true", help="keep GGUF files already in --work instead of writing them")
    p.add_argument("--no-read-back", action="store_true",
                   help="write the GGUF files without export's read-back (transformers + llama-simple); faster")
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    results = Path(args.results)
    png = results.with_suffix(".png")
    if args.plot_only:
        write_plot(json.loads(results.read_text()), png)
        return
    import torch

    from prunekit.export import export
    from prunekit.export.llama_cpp import llama_cpp_tool
    from prunekit.metrics.engine_speed import engine_speed, llama_perplexity

    for tool in ("llama-bench", "llama-perplexity", "llama-simple"):
        if llama_cpp_tool(tool) is None:
            sys.exit(f"{tool} is not built; run 'make llama-cpp' first")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), os.getloadavg()
    log: dict = {}
    models = build_models(args, log)
    quants = [q for q in args.quants.split(",") if q]
    files: dict[str, dict[str, str]] = {q: {} for q in quants}
    exports: dict[str, dict] = {}
    for name, (model, tok) in models.items():
        for q in quants:
            path = work / f"smollm2-{name.replace(':', '_')}-{q}.gguf"
            files[q][name] = str(path)
            if args.reuse and path.is_file():
                exports[f"{name} {q}"] = {"bytes": path.stat().st_size, "note": "kept from an earlier run"}
                continue
            if args.no_read_back:
                rep = write_file(model, tok, path, q)
            else:
                rep = export(model, tok, path, to="gguf", quant=q, source="smollm2-135m", overwrite=True)
            detail = rep.to_dict() if args.no_read_back else rep.detail
            exports[f"{name} {q}"] = {"bytes": rep.bytes, "read_back": detail.get("read_back"),
                                     "architecture": detail.get("architecture"), "hparams": detail.get("hparams")}
            print(rep, flush=True)
    params = {n: sum(p.numel() for p in m.parameters()) for n, (m, _) in models.items()}
    nonzeros = {n: int(sum(int((p != 0).sum()) for p in m.parameters())) for n, (m, _) in models.items()}
    del models
    text = heldout_text(work / "heldout-pydocs.txt", 400_000)
    speed = {}
    for q in quants:
        res = engine_speed(files[q], rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                           gen_tokens=args.gen_tokens, threads=args.threads, progress=True)
        print(res, flush=True)
        speed[q] = res.to_dict()
    ppl = {}
    for q in quants:
        for name, f in files[q].items():
            ppl[f"{name} {q}"] = llama_perplexity(f, text, ctx=args.ppl_ctx, chunks=args.ppl_chunks,
                                                  threads=max(args.threads, 1)).to_dict()
            print(name, q, ppl[f"{name} {q}"]["perplexity"], flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = []
    for q in quants:
        for name in files[q]:
            m = speed[q]["models"][name]
            up = speed[q]["speedups"].get(name, {})
            rows.append({"method": name, "quant": q, "bytes": m["bytes"], "params": params[name],
                         "nonzeros": nonzeros[name],
                         "prefill_tokens_per_s": m["prefill_tokens_per_s"], "decode_tokens_per_s": m["decode_tokens_per_s"],
                         "prefill_spread": m["prefill"]["spread"], "decode_spread": m["decode"]["spread"],
                         "decode_speedup": up.get("decode", {}).get("median", 1.0),
                         "decode_speedup_iqr": up.get("decode", {}).get("iqr", 0.0),
                         "prefill_speedup": up.get("prefill", {}).get("median", 1.0),
                         "prefill_speedup_iqr": up.get("prefill", {}).get("iqr", 0.0),
                         "noisy": m["decode"]["noisy"] or m["prefill"]["noisy"],
                         "why": sorted(set(m["decode"]["why"]) | set(m["prefill"]["why"])),
                         "perplexity": ppl[f"{name} {q}"]["perplexity"], "perplexity_stderr": ppl[f"{name} {q}"]["stderr"]})
    record = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "args": vars(args),
              "wall_s": time.perf_counter() - start,
              "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage), "load_before": load_before,
              "load_after": os.getloadavg(), "cores": os.cpu_count(),
              "perplexity": {"tool": "llama-perplexity", "text": "pydocs evaluation split (first 400k chars)",
                             "ctx": args.ppl_ctx, "chunks": args.ppl_chunks},
              "build": log, "exports": exports, "speed": speed, "rows": rows}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1, default=str) + "\n")
    results.with_suffix(".md").write_text(markdown(record) + "\n")
    write_plot(record, png)
    print(markdown(record))


def write_file(model, tok, path: Path, quant: str):
    """The GGUF file without export's read-back (the same writer and plan; tests cover the read-back)."""
    from prunekit.export import find_source_gguf
    from prunekit.export.gguf import plan_gguf, write_gguf
    from prunekit.infra.atomic import atomic_file

    plan = plan_gguf(model, tok, quant, find_source_gguf("smollm2-135m"))
    with atomic_file(path) as tmp:
        report = write_gguf(model, plan, tmp)
    report.path = str(path)
    return report


def markdown(record: dict) -> str:
    lines = ["| method | type | MB on disk | prefill tok/s | decode tok/s | decode speed-up vs dense (paired) | "
             "perplexity (llama.cpp) | flag |", "|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        up = "1 (baseline)" if r["method"] == "dense" else f"{r['decode_speedup']:.2f}× ±{r['decode_speedup_iqr'] / 2:.2f}"
        lines.append(f"| {r['method']} | {r['quant']} | {r['bytes'] / 1e6:.1f} | {r['prefill_tokens_per_s']:.0f} "
                     f"±{r['prefill_spread'] / 2:.0%} | {r['decode_tokens_per_s']:.1f} ±{r['decode_spread'] / 2:.0%} | "
                     f"{up} | {r['perplexity']:.2f} ±{r['perplexity_stderr']:.2f} | {'; '.join(r['why'])} |")
    a = record["args"]
    lines.append(f"\n{a['rounds']} interleaved llama-bench rounds per type, {a['threads']} thread, prefill "
                 f"{a['prompt_tokens']} / decode {a['gen_tokens']} tokens; perplexity: llama-perplexity, "
                 f"{a['ppl_chunks']} × {a['ppl_ctx']} tokens of held-out pydocs; KD {record['build']['kd']['tokens']} "
                 f"tokens; wall {record['wall_s'] / 60:.0f} min, CPU {record['cpu_s'] / 60:.0f} min, load "
                 f"{record['load_before'][0]:.1f} → {record['load_after'][0]:.1f} on {record['cores']} cores.")
    return "\n".join(lines)


STAGES = {"dense": [], "shrunk": [{"stage": "shrink", "target": "params=0.6"}, {"stage": "distill"}],
          "wanda50": [{"stage": "prune", "method": "wanda", "sparsity": 0.5}],
          "wanda2:4": [{"stage": "prune", "method": "wanda", "pattern": "2:4"}]}


def write_plot(record: dict, png: Path) -> None:
    """The Pareto plot as a PNG beside the JSON, and the same rows as an HTML report (prunekit's own page,
    whose lm groups plot quality against llama.cpp decode speed)."""
    from prunekit.bench.report import engine_pareto_png, html_report
    from prunekit.bench.store import Run

    points = [{"label": f"{r['method']} {r['quant']}", "series": r["method"], "speed": r["decode_tokens_per_s"],
               "spread": r["decode_spread"], "quality": r["perplexity"]} for r in record["rows"]]
    threads = record["args"]["threads"]
    png.write_bytes(engine_pareto_png(points, f"decode tokens/s in llama.cpp ({threads} thread)",
                                      "perplexity (held-out pydocs, llama-perplexity)"))
    a = record["args"]
    card = {"task": "lm", "model": "smollm2-135m",
            "evaluation": {"source": "pydocs evaluation split, llama-perplexity", "windows": a["ppl_chunks"],
                           "seqlen": a["ppl_ctx"], "tokens_hash": "llama.cpp's tokenizer"},
            "calibration": {"source": "pydocs", "nsamples": a["nsamples"], "seqlen": a["seqlen"]},
            "machine": {"threads": threads, "device": "cpu", "cores": record["cores"]},
            "versions": {"llama.cpp": record["speed"][a["quants"].split(",")[0]]["engine"]}}
    runs = []
    for r in record["rows"]:
        stages = [*STAGES.get(r["method"], []), {"stage": "export", "quant": r["quant"]}]
        figures = {"perplexity": r["perplexity"], "params": r["params"], "nonzeros": r["nonzeros"],
                   "llama_cpp_decode_tokens_per_s": r["decode_tokens_per_s"], "llama_cpp_decode_spread": r["decode_spread"],
                   "sparse_bytes": r["bytes"]}
        runs.append(Run(f"{r['method']}-{r['quant']}", "llama_cpp_speed", f"{r['method']} {r['quant']}", "lm",
                        "smollm2-135m", {"stages": stages, "seed": a["seed"]}, {}, card, "llama_cpp_speed", figures))
    png.with_suffix(".html").write_text(html_report(runs, "SmolLM2-135M in llama.cpp: quality against decode speed"))
    print(f"wrote {png} and {png.with_suffix('.html')}")


if __name__ == "__main__":
    main()
