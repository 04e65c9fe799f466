"""Which uniform shape under one parameter budget decodes fastest in llama.cpp: SmolLM2-135M cut to several shapes
of the uniform search's grid at ``--target`` (depth against width: fewer blocks with a wide MLP, or every block
with a narrow one), each written to GGUF (``--quants``, the ``gguf`` package's types) and timed in llama.cpp beside
the dense model — prefill and decode tokens/s with ``llama-bench``, the files of one type interleaved in
``--rounds`` rounds, each speed-up paired per round against dense (``prunekit.metrics.engine_speed``). No
distillation: speed does not depend on the weights' values, only on the shape. The files are written without
export's read-back (``llama_cpp_speed.write_file``, the same writer; llama-bench loading each file is the check
here, and the export tests cover the read-back). Results: ``--results`` (.json and a .md table).

    python benchmarks/shrink_shapes_speed.py --shapes "heads,neurons,depth:0;neurons,depth:2;neurons:0" --rounds 8

A shape is ``AXES:K``: the K-th (0-based) shape of the grid the uniform search offers along AXES under the target
(``benchmarks/shrink_kd_budget.py --grid-index`` cuts the same shapes for distillation). Needs llama.cpp's
``llama-bench`` (``make llama-cpp``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "shrink_shapes_speed.json"


def parse_shapes(text: str) -> list[tuple[list[str], int]]:
    """``"heads,neurons,depth:0;neurons:0"`` → [(axes, index), …]; one clear line for a malformed entry."""
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        axes, sep, index = part.rpartition(":")
        if not sep or not axes or not index.isdigit():
            raise SystemExit(f"--shapes entry {part!r} is not AXES:K (e.g. neurons,depth:2)")
        out.append((axes.split(","), int(index)))
    if not out:
        raise SystemExit("--shapes is empty: give at least one AXES:K")
    return out


def markdown(record: dict) -> str:
    lines = ["| shape | non-embedding kept | type | MB on disk | prefill tok/s | decode tok/s | decode speed-up vs dense "
             "(paired) | prefill speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['shape']} | {r['kept']:.1%} | {r['quant']} | {r['bytes'] / 1e6:.1f} | "
                     f"{r['prefill_tokens_per_s']:.0f} ±{r['prefill_spread']:.0%} | "
                     f"{r['decode_tokens_per_s']:.1f} ±{r['decode_spread']:.0%} | "
                     f"{r['decode_speedup']:.2f}× ±{r['decode_speedup_iqr']:.2f} | {r['prefill_speedup']:.2f}× |")
    a = record["args"]
    lines.append(f"\n{a['rounds']} interleaved llama-bench rounds per type, {a['threads']} thread(s), prefill "
                 f"{a['prompt_tokens']} / decode {a['gen_tokens']} tokens; load {record['load_before'][0]:.1f} → "
                 f"{record['load_after'][0]:.1f} on {record['cores']} cores; wall {record['wall_s'] / 60:.0f} min.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--shapes", default="heads,neurons,depth:0;neurons,depth:2;neurons:0")
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--work", default="/tmp/shrink_shapes_speed")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes)

    import copy

    import torch

    from llama_cpp_speed import write_file
    from prunekit.datasets.text import calibration_windows
    from prunekit.export.llama_cpp import llama_cpp_tool
    from prunekit.metrics.engine_speed import engine_speed
    from prunekit.models.hf import load_model
    from shrink_kd_budget import _cut_to_grid_shape

    if llama_cpp_tool("llama-bench") is None:
        raise SystemExit("llama-bench is not built; run 'make llama-cpp' first")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), os.getloadavg()
    lm = load_model("smollm2-135m")
    calib = calibration_windows(lm.tokenizer, "pydocs", nsamples=8, seqlen=256, seed=0, default=True,
                                say=lambda t: None)
    quants = [q for q in args.quants.split(",") if q]
    files: dict[str, dict[str, str]] = {q: {} for q in quants}
    info: dict[str, dict] = {"dense": {"shape": "dense", "kept": 1.0}}
    for q in quants:
        files[q]["dense"] = str(work / f"dense-{q}.gguf")
        write_file(lm.model, lm.tokenizer, Path(files[q]["dense"]), q)
    for axes, k in shapes:
        model = copy.deepcopy(lm.model)
        cut = _cut_to_grid_shape(model, args.target, calib, axes, k)
        name = f"{','.join(axes)}:{k}"
        info[name] = {"shape": cut["shape_after"], "kept": cut["non_embedding_kept"]}
        for q in quants:
            path = work / f"{name.replace(',', '-').replace(':', '_')}-{q}.gguf"
            write_file(model, lm.tokenizer, path, q)
            files[q][name] = str(path)
        print(name, cut["shape_after"], f"{cut['non_embedding_kept']:.1%}", flush=True)
        del model
    speed, rows = {}, []
    for q in quants:
        res = engine_speed(files[q], rounds=args.rounds, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                           threads=args.threads, progress=True)
        print(res, flush=True)
        speed[q] = d = res.to_dict()
        for name in files[q]:
            m, up = d["models"][name], d["speedups"].get(name, {})
            rows.append({"name": name, **info[name], "quant": q, "bytes": m["bytes"],
                         "prefill_tokens_per_s": m["prefill_tokens_per_s"],
                         "decode_tokens_per_s": m["decode_tokens_per_s"],
                         "prefill_spread": m["prefill"]["spread"], "decode_spread": m["decode"]["spread"],
                         "decode_speedup": up.get("decode", {}).get("median", 1.0),
                         "decode_speedup_iqr": up.get("decode", {}).get("iqr", 0.0),
                         "prefill_speedup": up.get("prefill", {}).get("median", 1.0),
                         "noisy": m["decode"]["noisy"] or m["prefill"]["noisy"]})
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "wall_s": time.perf_counter() - start,
              "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage), "load_before": load_before,
              "load_after": os.getloadavg(), "cores": os.cpu_count(), "speed": speed, "rows": rows}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1, default=str) + "\n")
    results.with_suffix(".md").write_text(markdown(record) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
