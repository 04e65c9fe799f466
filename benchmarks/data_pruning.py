"""Data-pruning benchmark on Fashion-MNIST: test accuracy of one small CNN trained with one fixed
schedule on subsets kept by random, EL2N-hardest, CCS, prototypicality, RS2 and CCS + distillation.

    python benchmarks/data_pruning.py --train-size 15000 --epochs 10 --threads 1

Writes a markdown table (stdout and --table), the raw results (--json) and the accuracy-vs-kept-
fraction plot (--plot, default docs/img/data_pruning.png). Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from prunekit.bench.data_pruning import BENCH_METHODS, PruningComparison, compare_pruning
from prunekit.datasets import load_fashion_mnist
from prunekit.models import SmallCNN

LABELS = {"random": "random", "el2n": "EL2N-hardest", "ccs": "CCS (EL2N)", "prototypes": "prototypes-hardest",
          "rs2": "RS2 (same steps)", "ccs+kd": "CCS + distillation"}


def plot(result: PruningComparison, path: Path, title: str) -> None:
    """Accuracy vs kept fraction, one line per method, the full-data accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(r["method"] for r in result.rows):
        rows = sorted((r for r in result.rows if r["method"] == method), key=lambda r: r["keep"])
        ax.plot([100 * r["keep"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o",
                label=LABELS.get(method, method))
    if result.full_accuracy == result.full_accuracy:  # trained (not NaN)
        ax.axhline(100 * result.full_accuracy, color="grey", linestyle="--", label="full data")
    ax.set_xlabel("kept fraction of the training set (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def claims(result: PruningComparison) -> list[str]:
    """The papers' claims at the smallest kept fraction, checked against these numbers."""
    acc = {(r["method"], r["keep"]): r["accuracy"] for r in result.rows}
    low = min(r["keep"] for r in result.rows)
    out = []
    if ("ccs", low) in acc and ("random", low) in acc:
        ok = acc[("ccs", low)] >= acc[("random", low)]
        out.append(f"CCS >= random at {low:.0%} kept: {'held' if ok else 'did not hold'} "
                   f"({100 * acc[('ccs', low)]:.2f} vs {100 * acc[('random', low)]:.2f})")
    if ("el2n", low) in acc and ("random", low) in acc:
        ok = acc[("el2n", low)] < acc[("random", low)]
        out.append(f"EL2N-hardest < random at {low:.0%} kept: {'held' if ok else 'did not hold'} "
                   f"({100 * acc[('el2n', low)]:.2f} vs {100 * acc[('random', low)]:.2f})")
    for keep in sorted({r["keep"] for r in result.rows}, reverse=True):
        if ("rs2", keep) not in acc:
            continue
        static = {m: a for (m, k), a in acc.items() if k == keep and m not in ("rs2", "ccs+kd")}
        best = max(static, key=static.get)
        ok = acc[("rs2", keep)] >= static[best]
        out.append(f"RS2 >= every static subset at {keep:.0%} kept: {'held' if ok else 'did not hold'} "
                   f"(RS2 {100 * acc[('rs2', keep)]:.2f}, best static {best} {100 * static[best]:.2f})")
    return out


def time_scores(train, model_fn, args: argparse.Namespace) -> str:
    """Seconds to compute every score of ``prunekit.data.score`` on ``train`` (markdown table).
    Embedding scores use the features of one proxy trained ``--score-epochs`` (its training is timed apart)."""
    from prunekit.data import SCORES, score
    from prunekit.data import feature_extractor as default_embedder
    from prunekit.train import fit

    import sklearn.cluster  # noqa: F401 - import time is not scoring time
    from torch.func import vmap  # noqa: F401

    score(torch.utils.data.Subset(train, range(64)), "el2n", model_fn=model_fn, epochs=1, batch_size=32,
          progress=False)  # warm-up: first calls into torch are slower
    lines = ["| score | time (s) | settings |", "|---|---:|---|"]
    proxy = None
    for method in SCORES:
        kw = dict(seed=args.seed, progress=not args.quiet)
        if method in ("prototypes", "density"):
            if proxy is None:
                t0 = time.perf_counter()
                torch.manual_seed(args.seed)
                proxy = model_fn()
                fit(proxy, train, epochs=args.score_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                    progress=not args.quiet)
                lines.append(f"| (proxy for embeddings) | {time.perf_counter() - t0:.1f} | {args.score_epochs} epoch(s) |")
            kw.update(embed_fn=default_embedder(proxy), n_clusters=args.n_clusters)
            what = f"k-means, k={args.n_clusters}, on proxy features"
        else:
            epochs = max(1, round(args.score_epochs)) if method in ("forgetting", "aum") else args.score_epochs
            kw.update(model_fn=model_fn, epochs=epochs, n_models=args.n_models, lr=args.lr, batch_size=args.batch_size)
            what = f"{args.n_models} proxies × {epochs} epoch(s)"
        t0 = time.perf_counter()
        score(train, method, **kw)
        lines.append(f"| {method} | {time.perf_counter() - t0:.1f} | {what} |")
        if not args.quiet:
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    """Run the comparison and write the table, the JSON and the plot."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=15000, help="first N Fashion-MNIST training examples")
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=10, help="epochs over each kept subset (and the full set)")
    p.add_argument("--score-epochs", type=float, default=1.0, help="epochs of each EL2N proxy model")
    p.add_argument("--n-models", type=int, default=2, help="EL2N proxies averaged")
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64], help="SmallCNN widths")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3, 0.1])
    p.add_argument("--methods", nargs="+", choices=BENCH_METHODS, default=list(BENCH_METHODS))
    p.add_argument("--n-clusters", type=int, default=50)
    p.add_argument("--ccs-beta", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-full", action="store_true", help="skip the full-data run when no method needs it")
    p.add_argument("--plot", type=Path, default=Path("docs/img/data_pruning.png"))
    p.add_argument("--table", type=Path, help="also write the markdown table here")
    p.add_argument("--json", type=Path, help="write the raw results here")
    p.add_argument("--mode", choices=("compare", "timings", "both"), default="both",
                   help="compare: accuracy table and plot; timings: seconds of every score")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    train = load_fashion_mnist("train", limit=args.train_size)
    test = load_fashion_mnist("test", limit=args.test_size)
    widths = tuple(args.widths)
    if args.mode in ("timings", "both"):
        timings = time_scores(train, lambda: SmallCNN(widths=widths), args)
        print(f"score timings, {len(train)} Fashion-MNIST examples, SmallCNN{widths}, {args.threads} thread(s)")
        print(timings)
        if args.mode == "timings":
            return
    start = time.perf_counter()
    result = compare_pruning(train, test, lambda: SmallCNN(widths=widths), fractions=tuple(args.fractions),
                             methods=tuple(args.methods), epochs=args.epochs, score_epochs=args.score_epochs,
                             n_models=args.n_models, n_clusters=args.n_clusters, ccs_beta=args.ccs_beta,
                             lr=args.lr, batch_size=args.batch_size, seed=args.seed, full_baseline=not args.no_full,
                             progress=not args.quiet,
                             log=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)))
    total = time.perf_counter() - start
    settings = (f"Fashion-MNIST, {len(train)} train / {len(test)} test, SmallCNN{widths}, {args.epochs} epochs "
                f"SGD lr {args.lr} cosine, batch {args.batch_size}, seed {args.seed}, {args.threads} thread(s)")
    lines = [settings, "", result.table(), "", "| score | time (s) |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in result.score_seconds.items()]
    if result.full_seconds == result.full_seconds:
        lines.append(f"| (full-data training, teacher of ccs+kd) | {result.full_seconds:.1f} |")
    lines += ["",
              f"total wall time {total:.0f} s on {platform.processor() or platform.machine()}", ""]
    lines += [f"- {c}" for c in claims(result)]
    text = "\n".join(lines)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": result.rows, "full_accuracy": result.full_accuracy,
                                         "score_seconds": result.score_seconds, "total_seconds": total}, indent=2))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot, settings)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
