"""FastV-style prompt pruning on SmolLM2-135M with long prompts of real prose.

Each prompt is ``--prompt-tokens`` tokens of a Python documentation page (the evaluation split of
``prunekit.datasets.text``), followed by the next ``--continuation`` tokens of the same page. For
the full model and for ``prunekit.tokens.prune_(model, method="fastv", layer=K, keep=…)``:

- prefill: tokens/s (wall and process CPU time) and the KV-cache bytes it leaves;
- the continuation scored with that cache (teacher forcing): its perplexity, and the share of
  positions whose top-1 prediction equals the full model's (the first one is the next-token
  agreement proper);
- greedy decoding of ``--decode`` tokens from the cache: tokens/s, and how many of them match the
  full model's greedy tokens (checked once against ``model.generate`` with the patched model).

Configurations run in turn for each prompt, in one process (a shared machine: compare the CPU
columns and the speed-ups, which are per-prompt ratios).

    python benchmarks/tokens_smollm2.py --prompts 8 --prompt-tokens 1024
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tokens_timing import markdown_table  # noqa: E402

import prunekit.tokens as pt  # noqa: E402
from prunekit.datasets.text import documents, split_documents  # noqa: E402
from prunekit.models.hf import load_model  # noqa: E402


def prompts(tokenizer, count: int, prompt_len: int, cont_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for doc in split_documents(documents("pydocs"), "evaluation"):
        ids = tokenizer(doc.text, return_tensors="pt")["input_ids"][0]
        if len(ids) >= prompt_len + cont_len:
            out.append((ids[:prompt_len].unsqueeze(0), ids[prompt_len:prompt_len + cont_len].unsqueeze(0)))
            if len(out) == count:
                break
    if len(out) < count:
        raise SystemExit(f"only {len(out)} documents hold {prompt_len + cont_len} tokens")
    return out


def cache_bytes(cache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


@torch.no_grad()
def run_one(model, prompt, cont, decode: int):
    out, wall, cpu = timed(lambda: model(prompt, use_cache=True))
    cache = out.cache
    kv = cache_bytes(cache)
    first = out.logits[0, -1]
    dec_cache = copy.deepcopy(cache)
    # greedy decoding with the cache (what generate does after the prefill)
    def decode_loop():
        tok = first.argmax().view(1, 1)
        toks = [tok.item()]
        c = dec_cache
        for _ in range(decode - 1):
            o = model(tok, cache=c, use_cache=True)
            c = o.cache
            tok = o.logits[0, -1].argmax().view(1, 1)
            toks.append(tok.item())
        return toks
    greedy, dwall, dcpu = timed(decode_loop)
    # the continuation, teacher-forced, with the cache
    rest = model(cont[:, :-1], cache=cache, use_cache=True).logits[0]
    logits = torch.cat([first.unsqueeze(0), rest])  # predictions of cont[0], …, cont[-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), cont[0], reduction="sum").item()
    return {"prefill_wall": wall, "prefill_cpu": cpu, "kv_bytes": kv, "decode_wall": dwall, "decode_cpu": dcpu,
            "greedy": greedy, "argmax": logits.argmax(-1).tolist(), "nll": nll, "n": cont.shape[1]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--continuation", type=int, default=64)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--score", nargs="+", default=["last"], choices=["last", "mean", "recent", "random"],
                   help="rankings to compare (each at every --keep)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model.eval(), loaded.tokenizer
    data = prompts(tok, args.prompts, args.prompt_tokens, args.continuation)
    with torch.no_grad():  # warm-up: one-time allocations out of the first timed prefill
        model(data[0][0][:, :64])
    configs = {"full": None}
    for score in args.score:
        for k in args.keep:
            configs[f"keep={k}" if args.score == ["last"] else f"{score} keep={k}"] = (k, score)
    per = {name: [] for name in configs}
    checked_generate = False
    for i, (prompt, cont) in enumerate(data):
        for name, spec in configs.items():
            keep = None if spec is None else spec[0]
            if keep is not None:
                pt.prune_(model, method="fastv", keep=keep, layer=args.layer, score=spec[1])
            try:
                row = run_one(model, prompt, cont, args.decode)
                if keep is not None and not checked_generate:
                    gen = model.generate(prompt, max_new_tokens=args.decode, do_sample=False)[0, prompt.shape[1]:]
                    assert gen.tolist() == row["greedy"], "generate() and the cached greedy loop disagree"
                    checked_generate = True
                if keep is not None:
                    row["kept"] = pt.last_forward(model)["kept_tokens"]
            finally:
                if keep is not None:
                    pt.unpatch_(model)
            per[name].append(row)
        print(f"  prompt {i + 1}/{len(data)} done", flush=True)

    base = per["full"]
    results = {}
    for name, rows in per.items():
        agree_first = statistics.mean(float(r["argmax"][0] == b["argmax"][0]) for r, b in zip(rows, base))
        agree_all = statistics.mean(statistics.mean(float(x == y) for x, y in zip(r["argmax"], b["argmax"]))
                                    for r, b in zip(rows, base))
        greedy_same = statistics.mean(statistics.mean(float(x == y) for x, y in zip(r["greedy"], b["greedy"]))
                                      for r, b in zip(rows, base))
        prefix = statistics.mean(next((j for j, (x, y) in enumerate(zip(r["greedy"], b["greedy"])) if x != y),
                                      len(r["greedy"])) for r, b in zip(rows, base))
        ppl = math.exp(sum(r["nll"] for r in rows) / sum(r["n"] for r in rows))
        results[name] = {
            "kept_tokens": statistics.mean(r.get("kept", args.prompt_tokens) for r in rows),
            "next_token_agreement": agree_first, "continuation_top1_agreement": agree_all, "perplexity": ppl,
            "greedy_same": greedy_same, "greedy_common_prefix": prefix,
            "prefill_tok_s_wall": args.prompt_tokens / statistics.median(r["prefill_wall"] for r in rows),
            "prefill_tok_s_cpu": args.prompt_tokens / statistics.median(r["prefill_cpu"] for r in rows),
            "prefill_speedup_cpu": statistics.median(b["prefill_cpu"] / r["prefill_cpu"] for r, b in zip(rows, base)),
            "prefill_speedup_wall": statistics.median(b["prefill_wall"] / r["prefill_wall"] for r, b in zip(rows, base)),
            "decode_tok_s_wall": (args.decode - 1) / statistics.median(r["decode_wall"] for r in rows),
            "decode_tok_s_cpu": (args.decode - 1) / statistics.median(r["decode_cpu"] for r in rows),
            "decode_speedup_cpu": statistics.median(b["decode_cpu"] / r["decode_cpu"] for r, b in zip(rows, base)),
            "kv_mb": statistics.mean(r["kv_bytes"] for r in rows) / 2**20,
        }
    full_kv = results["full"]["kv_mb"]
    rows = []
    for name, r in results.items():
        rows.append([name, f"{r['kept_tokens']:.0f}", f"{100 * r['next_token_agreement']:.0f}",
                     f"{100 * r['continuation_top1_agreement']:.1f}", f"{r['perplexity']:.2f}",
                     f"{100 * r['greedy_same']:.0f}", f"{r['greedy_common_prefix']:.1f}",
                     f"{r['prefill_tok_s_wall']:.0f}", f"{r['prefill_tok_s_cpu']:.0f}", f"{r['prefill_speedup_cpu']:.2f}×",
                     f"{r['decode_tok_s_wall']:.1f}", f"{r['decode_tok_s_cpu']:.1f}", f"{r['decode_speedup_cpu']:.2f}×",
                     f"{r['kv_mb']:.1f} ({r['kv_mb'] / full_kv:.0%})"])
    table = markdown_table(["configuration", "prompt tokens kept (layers ≥ K)", "next-token agreement %",
                            "continuation top-1 agreement %", "continuation perplexity", f"greedy {args.decode} same %",
                            "greedy common prefix", "prefill tok/s wall", "prefill tok/s CPU", "prefill speed-up CPU",
                            "decode tok/s wall", "decode tok/s CPU", "decode speed-up CPU", "KV cache MB"], rows)
    print()
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 → fp32), {len(data)} prompts × {args.prompt_tokens} tokens of Python's docs "
          f"(eval split), continuation {args.continuation} tokens, greedy decode {args.decode}; FastV layer K={args.layer}, "
          f"score={'/'.join(args.score)}; {args.threads} thread(s); generate() checked equal to the cached greedy loop: {checked_generate}")
    print(table)
    out = {"args": vars(args), "results": results, "table": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
