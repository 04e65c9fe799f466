"""Gemma 3 270M (262,144-token vocabulary: 168M of its 268M parameters are the embedding) cut along the vocabulary
(the tokens the calibration split of Python's docs uses, plus what they are built from, bytes and special tokens)
and then along width and depth (``shrink_``, Minitron-style) with a short logit distillation from the
vocabulary-trimmed model. Figures per stage: parameters (all, embedding, non-embedding), bytes on disk of the saved
safetensors (float32, as the dense folder), loss on held-out Python docs as bits per byte (comparable across
tokenizers) and as perplexity per token of the dense tokenizer, and greedy generation speed in transformers (paired:
all models interleaved round by round, one thread, each with its own tokenizer's ids of the same prompt).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/gemma3_vocab.py            # the README's figures
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/gemma3_vocab.py --kd-steps 0 --eval-chars 8000   # a quick look

Results: ``benchmarks/results/gemma3_vocab.json`` (every stage's wall and CPU seconds beside its figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """Wall and CPU seconds of each stage."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()
                print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)

            def __exit__(self, *exc):
                clock.stages[name] = {"wall_s": time.perf_counter() - self.w, "cpu_s": time.process_time() - self.c}
                print(f"    {name}: {clock.stages[name]['wall_s']:.0f} s wall, {clock.stages[name]['cpu_s']:.0f} s CPU",
                      flush=True)

        return _Stage()


def params(model) -> dict[str, int]:
    from prunekit.shrink.budget import non_embedding_params
    from prunekit.shrink.width import param_count

    total = param_count(model)
    ne = non_embedding_params(model)
    return {"all": total, "non_embedding": ne, "embedding_and_head": total - ne}


def save(model, tokenizer, folder: Path) -> int:
    """Save as safetensors with the tokenizer, read back with stock from_pretrained, compare logits; weight bytes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunekit.metrics.size import weight_bytes

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    back = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(str(folder))
    ids = back_tok("The Python standard library provides", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = float((back(ids).logits - model(ids).logits).abs().max())
    assert diff < 1e-4, f"the saved folder does not reproduce the model (logits differ by {diff})"
    return weight_bytes(folder)


def generation(models: dict[str, tuple], prompt: str, new_tokens: int, budget_s: float) -> dict[str, dict]:
    """Greedy generation of ``new_tokens`` tokens, all models interleaved (prunekit.infra.latency), one thread."""
    from prunekit.infra.latency import time_interleaved

    fns, prompts = {}, {}
    for name, (model, tok) in models.items():
        ids = tok(prompt, return_tensors="pt").input_ids
        prompts[name] = int(ids.shape[1])
        kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

        def run(model=model, ids=ids, kw=kw):
            with torch.no_grad():
                model.generate(ids, **kw)
        fns[name] = run
    cmp = time_interleaved(fns, warmup=1, min_rounds=3, max_rounds=20, budget_s=budget_s, target_precision=0.03,
                           threads=1)
    out = {}
    for name, t in cmp.timings.items():
        out[name] = {"prompt_tokens": prompts[name], "new_tokens": new_tokens, "median_s": t.median_ms / 1e3,
                     "tokens_per_s": new_tokens / (t.median_ms / 1e3), "runs": t.runs, "spread": t.spread,
                     "cpu_median_s": t.cpu_median_ms / 1e3, "noisy": t.noisy, "why": t.reasons()}
    first = next(iter(models))
    for name in models:
        out[name]["speedup_vs_" + first] = out[first]["median_s"] / out[name]["median_s"]
    return out


def held_out_text(chars: int) -> list[str]:
    from prunekit.datasets.text import documents, split_documents

    texts, n = [], 0
    for d in split_documents(documents("pydocs"), "evaluation"):
        texts.append(d.text + "\n\n")
        n += len(texts[-1])
        if n >= chars:
            break
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6", help="shrink_'s budget after the vocabulary (non-embedding)")
    p.add_argument("--axes", default="hidden,depth")
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-chars", type=int, default=40000, help="characters of held-out pydocs scored")
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=2)
    p.add_argument("--kd-seqlen", type=int, default=256)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--timing-budget", type=float, default=120.0)
    p.add_argument("--out", default="/tmp/gemma3-vocab-bench")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "gemma3_vocab.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from prunekit.datasets.text import calibration_windows
    from prunekit.models.hf import load_model, resolve_model_path
    from prunekit.shrink import shrink_
    from prunekit.shrink.distill import DistillConfig, distill_, text_stream
    from prunekit.shrink.vocab import corpus_texts, text_loss, trim_vocab_

    clock = Clock()
    out = Path(args.out)
    figures: dict[str, dict] = {}
    result: dict = {"command": "OMP_NUM_THREADS=1 python benchmarks/gemma3_vocab.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "results")),
        "threads": 1, "load_before": os.getloadavg(), "cpu": os.cpu_count(), "figures": figures}

    def write() -> None:
        result["stages"] = clock.stages
        dense_tokens = figures["dense"]["held_out"]["tokens"] if "held_out" in figures.get("dense", {}) else None
        for f in figures.values():
            for key in ("held_out", "held_out_distilled"):
                if key in f and dense_tokens:
                    f[key]["perplexity_per_dense_token"] = math.exp(f[key]["nats"] / dense_tokens)
        Path(args.results).write_text(json.dumps(result, indent=2, default=str) + "\n")

    with clock("load"):
        lm = load_model("gemma3-270m")
        dense, tok = lm.model, lm.tokenizer
    source = resolve_model_path("gemma3-270m")
    result["source"] = {"file": source.name, "gguf_bytes": source.stat().st_size}
    held = held_out_text(args.eval_chars)
    figures["dense"] = {"params": params(dense)}
    with clock("loss dense"):
        figures["dense"]["held_out"] = text_loss(dense, tok, held, seqlen=512)
    with clock("save dense"):
        figures["dense"]["safetensors_bytes"] = save(dense, tok, out / "dense")
    write()

    with clock("vocab"):
        texts = corpus_texts("pydocs")
        vocab_model = copy.deepcopy(dense)
        report = trim_vocab_(vocab_model, tok, texts)
        vtok = report.tokenizer
    result["vocab"] = report.to_dict()
    figures["vocab"] = {"params": params(vocab_model)}
    with clock("loss vocab"):
        figures["vocab"]["held_out"] = text_loss(vocab_model, vtok, held, seqlen=512)
    with clock("save vocab"):
        figures["vocab"]["safetensors_bytes"] = save(vocab_model, vtok, out / "vocab")
    write()

    with clock("shrink"):
        calib = calibration_windows(vtok, "pydocs", args.nsamples, args.seqlen, 0)
        student = copy.deepcopy(vocab_model)
        shrink = shrink_(student, args.target, calib, args.axes.split(","), candidates=args.candidates)
    result["shrink"] = shrink.to_dict()
    figures["vocab+shrink"] = {"params": params(student)}
    with clock("loss shrink"):
        figures["vocab+shrink"]["held_out"] = text_loss(student, vtok, held, seqlen=512)
    write()
    # speed does not depend on the weights' values: timed before the distillation, all three interleaved
    with clock("generation"):
        result["generation"] = generation({"dense": (dense, tok), "vocab": (vocab_model, vtok),
                                           "vocab+shrink": (student, vtok)},
                                          "The Python standard library provides", args.new_tokens, args.timing_budget)
    write()
    if args.kd_steps:
        with clock("distill"):
            cfg = DistillConfig(steps=args.kd_steps, batch_size=args.kd_batch, seqlen=args.kd_seqlen, lr=args.kd_lr)
            kd = distill_(student, vocab_model, text_stream(vtok, "pydocs", args.kd_seqlen, 0), cfg, progress=False)
        result["distill"] = kd.to_dict()
        with clock("loss distilled"):
            figures["vocab+shrink"]["held_out_distilled"] = text_loss(student, vtok, held, seqlen=512)
    with clock("save shrink"):
        figures["vocab+shrink"]["safetensors_bytes"] = save(student, vtok, out / "vocab-shrink")
    write()
    result["load_after"] = os.getloadavg()
    write()
    print(json.dumps({k: result[k] for k in ("figures", "generation")}, indent=2, default=str))


if __name__ == "__main__":
    main()
