"""llama.cpp's perplexity of a distilled student against dense SmolLM2-135M, at f16 and q8_0: both exported to
GGUF by prunekit (read back by llama.cpp), scored by ``llama-perplexity`` on the same held-out pydocs text
(windows of ``--ctx`` tokens, each scored on its second half, ``--chunks`` windows). Speed is not timed here
(the shape's speed does not change with more distillation: ``benchmarks/llama_cpp_speed.py`` times it).

    python benchmarks/shrink_kd_llama_ppl.py /tmp/shrink_kd_continued/student --work /tmp/kd_llama_ppl \\
        --results benchmarks/results/shrink_kd_continued_llama_ppl.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", help="the distilled student's Hugging Face folder")
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/shrink_kd_llama_ppl", help="folder for the GGUF files (kept)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_kd_llama_ppl.json"))
    args = p.parse_args()

    from prunekit.export import export
    from prunekit.metrics.engine_speed import heldout_text_file, llama_perplexity
    from prunekit.models.hf import load_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    text = heldout_text_file(work / "heldout-pydocs.txt", "pydocs", 400_000)
    dense = load_model("smollm2-135m")
    student = load_model(args.student)
    record = {"command": " ".join(["python", *sys.argv]), "args": vars(args), "perplexity": {}, "bytes": {}}
    start = time.perf_counter()
    for q in args.quants.split(","):
        for name, lm in (("dense", dense), ("student", student)):
            out = work / f"{name}-{q}.gguf"
            rep = export(lm.model, lm.tokenizer, out, to="gguf", quant=q, source="smollm2-135m", overwrite=True)
            record["bytes"][f"{name} {q}"] = rep.bytes
            res = llama_perplexity(out, text, ctx=args.ctx, chunks=args.chunks, threads=args.threads)
            record["perplexity"][f"{name} {q}"] = res.to_dict()
            print(f"{name} {q}: {res.perplexity:.3f} ± {res.stderr:.3f}, {rep.bytes / 1e6:.1f} MB", flush=True)
        record["perplexity"][f"ratio {q}"] = (record["perplexity"][f"student {q}"]["perplexity"]
                                              / record["perplexity"][f"dense {q}"]["perplexity"])
        print(f"student / dense at {q}: {record['perplexity'][f'ratio {q}']:.3f}", flush=True)
    record["wall_s"] = time.perf_counter() - start
    Path(args.results).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
