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

Every configuration is a patched copy of the model. Quality is measured on every prompt; prefill
and decode times come from ``prunekit.infra.latency.time_interleaved`` on the first prompt (every
configuration in turn in each round, in one process; median, IQR spread, paired speed-up over the
full model, noisy flag).

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
from _tokens_timing import conditions, markdown_table, speedup_cell, spread_cell, timed  # noqa: E402

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


@torch.no_grad()
def greedy_from(model, first_logits: torch.Tensor, cache, steps: int) -> list[int]:
    """Greedy decoding of ``steps`` tokens after a prefill (what ``generate`` does after it)."""
    tok = first_logits.argmax().view(1, 1)
    toks = [tok.item()]
    c = cache
    for _ in range(steps - 1):
        o = model(tok, cache=c, use_cache=True)
        c = o.cache
        tok = o.logits[0, -1].argmax().view(1, 1)
        toks.append(tok.item())
    return toks


@torch.no_grad()
def run_one(model, prompt, cont, decode: int):
    """Quality figures of one prompt: KV-cache bytes, greedy tokens, the continuation's top-1 and NLL."""
    out = model(prompt, use_cache=True)
    cache = out.cache
    kv = cache_bytes(cache)
    first = out.logits[0, -1]
    greedy = greedy_from(model, first, copy.deepcopy(cache), decode)
    # the continuation, teacher-forced, with the cache
    rest = model(cont[:, :-1], cache=cache, use_cache=True).logits[0]
    logits = torch.cat([first.unsqueeze(0), rest])  # predictions of cont[0], …, cont[-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), cont[0], reduction="sum").item()
    return {"kv_bytes": kv, "greedy": greedy, "argmax": logits.argmax(-1).tolist(), "nll": nll, "n": cont.shape[1]}


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
    p.add_argument("--baselines", nargs="*", default=["recent", "random"], choices=["mean", "recent", "random"],
                   help="other rankings, each at --baseline-keep (equal kept tokens)")
    p.add_argument("--baseline-keep", type=float, nargs="+", default=[0.5])
    p.add_argument("--time-budget", type=float, default=60.0, help="seconds of interleaved timing, prefill and decode each")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=20)
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
            configs[f"{score} keep={k}"] = (k, score)
    for score in args.baselines:
        for k in args.baseline_keep:
            configs.setdefault(f"{score} keep={k}", (k, score))
    # one model per configuration (a patched copy), so that timing calls only forwards
    models = {}
    for name, spec in configs.items():
        models[name] = model if spec is None else copy.deepcopy(model)
        if spec is not None:
            pt.prune_(models[name], method="fastv", keep=spec[0], layer=args.layer, score=spec[1])
    per = {name: [] for name in configs}
    checked_generate = False
    for i, (prompt, cont) in enumerate(data):
        for name, spec in configs.items():
            net = models[name]
            row = run_one(net, prompt, cont, args.decode)
            if spec is not None and not checked_generate:
                gen = net.generate(prompt, max_new_tokens=args.decode, do_sample=False)[0, prompt.shape[1]:]
                assert gen.tolist() == row["greedy"], "generate() and the cached greedy loop disagree"
                checked_generate = True
            if spec is not None:
                row["kept"] = pt.last_forward(net)["kept_tokens"]
            per[name].append(row)
        print(f"  prompt {i + 1}/{len(data)} done", flush=True)

    # timing on the first prompt, interleaved: the prefill, then greedy decoding from its cache
    prompt0 = data[0][0]

    def prefill(net):
        def run():
            with torch.no_grad():
                net(prompt0, use_cache=True)
        return run

    print(f"timing the prefill of {prompt0.shape[1]} tokens (budget {args.time_budget:.0f} s)", flush=True)
    t_pre, cmp_pre = timed({n: prefill(models[n]) for n in configs}, args.prompt_tokens, budget_s=args.time_budget,
                           min_rounds=args.min_rounds, max_rounds=args.max_rounds, threads=args.threads)
    prefilled = {}
    with torch.no_grad():
        for n in configs:
            o = models[n](prompt0, use_cache=True)
            prefilled[n] = (o.logits[0, -1], o.cache)

    def decoding(n):
        def run():
            first, cache = prefilled[n]
            greedy_from(models[n], first, copy.deepcopy(cache), args.decode)
        return run

    print(f"timing greedy decoding of {args.decode} tokens (budget {args.time_budget:.0f} s)", flush=True)
    t_dec, cmp_dec = timed({n: decoding(n) for n in configs}, args.decode - 1, budget_s=args.time_budget,
                           min_rounds=args.min_rounds, max_rounds=args.max_rounds, threads=args.threads)

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
            "prefill": t_pre[name], "decode": t_dec[name],
            "kv_mb": statistics.mean(r["kv_bytes"] for r in rows) / 2**20,
        }
    full_kv = results["full"]["kv_mb"]
    rows = []
    for name, r in results.items():
        pre, dec = r["prefill"], r["decode"]
        rows.append([name, f"{r['kept_tokens']:.0f}", f"{100 * r['next_token_agreement']:.0f}",
                     f"{100 * r['continuation_top1_agreement']:.1f}", f"{r['perplexity']:.2f}",
                     f"{100 * r['greedy_same']:.0f}", f"{r['greedy_common_prefix']:.1f}",
                     f"{pre['items_per_s_wall']:.0f}", f"{pre['items_per_s_cpu']:.0f}", spread_cell(pre), speedup_cell(pre),
                     f"{dec['items_per_s_wall']:.1f}", spread_cell(dec), speedup_cell(dec),
                     f"{r['kv_mb']:.1f} ({r['kv_mb'] / full_kv:.0%})"])
    table = markdown_table(["configuration", "prompt tokens kept (layers ≥ K)", "next-token agreement %",
                            "continuation top-1 agreement %", "continuation perplexity", f"greedy {args.decode} same %",
                            "greedy common prefix", "prefill tok/s wall", "prefill tok/s CPU", "prefill spread (flag)",
                            "prefill speed-up (paired)", "decode tok/s wall", "decode spread (flag)",
                            "decode speed-up (paired)", "KV cache MB"], rows)
    print()
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 → fp32), {len(data)} prompts × {args.prompt_tokens} tokens of Python's docs "
          f"(eval split), continuation {args.continuation} tokens, greedy decode {args.decode}; FastV layer K={args.layer}, "
          f"score={'/'.join(args.score)}; generate() checked equal to the cached greedy loop: {checked_generate}")
    print(f"prefill timing (prompt 1): {conditions(cmp_pre)}")
    print(f"decode timing (prompt 1, a copy of the prefilled cache per run): {conditions(cmp_dec)}")
    print(table)
    out = {"args": vars(args), "results": results, "prefill_timing": cmp_pre.to_dict(),
           "decode_timing": cmp_dec.to_dict(), "table": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
