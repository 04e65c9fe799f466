"""Does density-based pruning beat random at equal data? Fashion-MNIST, one small CNN, one schedule.

Embeddings of the training images (raw pixels, L2-normalized — no labels used — or the features of a
SmallCNN trained ``--proxy-epochs`` on the same images), spherical k-means, then three subsets of
*equal size* at each budget:

- ``semdedup``: SemDeDup at ``--eps`` (its size sets budget A);
- ``dbp``: density-based pruning on the SemDeDup-kept examples (the paper's order: deduplicate, then DBP;
  at budget A, on all examples), keeping the least prototypical members of each cluster (the paper's
  choice); ``dbp-random``: the same per-cluster budgets, random members;
- ``random``: a seeded random subset.

Each subset trains ``SmallCNN(widths=(16, 32, 64))`` for ``--epochs`` epochs (SGD 0.05, momentum 0.9,
cosine, batch 128) — equal data, so equal steps — and is tested on all 10,000 test images. Every seed
redraws the k-means, the random subset and the network's initialization.

    nice -n 10 python benchmarks/web_quality.py --train-size 20000 --epochs 5 --seeds 0 1 2 --budgets 0.3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def embeddings(train, kind: str, proxy_epochs: float, seed: int) -> np.ndarray:
    x = train.tensors[0]
    if kind == "pixels":
        flat = x.flatten(1).numpy().astype(np.float32)
        return flat - flat.mean(0)  # centred pixels (the dataset's mean image removed)
    from prunekit.data import embed, feature_extractor
    from prunekit.models import SmallCNN
    from prunekit.train import fit

    torch.manual_seed(seed)
    proxy = SmallCNN(widths=(16, 32, 64))
    fit(proxy, train, epochs=proxy_epochs, seed=seed, progress=False)
    return embed(feature_extractor(proxy), train)


def train_eval(train, test, indices: np.ndarray, epochs: int, seed: int) -> float:
    from prunekit.data import SubsetSampler, fit_sampled
    from prunekit.metrics.accuracy import accuracy
    from prunekit.models import SmallCNN

    torch.manual_seed(seed)
    model = SmallCNN(widths=(16, 32, 64))
    fit_sampled(model, train, SubsetSampler(indices, seed=seed), epochs=epochs, lr=0.05, batch_size=128,
                progress=False)
    return accuracy(model, test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3], help="kept fractions besides SemDeDup's own")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--embedding", choices=("pixels", "cnn"), default="pixels")
    p.add_argument("--proxy-epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the raw results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from prunekit.data import dedup, density
    from prunekit.datasets import load_fashion_mnist

    train = load_fashion_mnist("train", limit=args.train_size)
    test = load_fashion_mnist("test")
    n = len(train)
    rows = []
    t_start = time.perf_counter()
    for seed in args.seeds:
        emb = embeddings(train, args.embedding, args.proxy_epochs, seed)
        dd = dedup(emb, n_clusters=args.clusters, eps=args.eps, seed=seed, progress=False)
        budgets = [("semdedup", dd.kept / n)] + [(f"{b:.0%}", b) for b in args.budgets]
        for name, frac in budgets:
            size = round(frac * n)
            subsets = {"random": np.sort(np.random.default_rng([seed, 1]).choice(n, size, replace=False))}
            if name == "semdedup":
                subsets["semdedup"] = dd.indices
                pool, keep = None, size / n
            else:
                pool, keep = dd.indices, size / dd.kept
            for label, prefer in (("dbp", "hard"), ("dbp-random", "random")):
                subsets[label] = density(emb, n_clusters=args.clusters, keep=keep, subset=pool, seed=seed,
                                         temperature=args.temperature, prefer=prefer, progress=False).indices
            for method, idx in subsets.items():
                assert len(idx) == size, (method, len(idx), size)
                t0 = time.perf_counter()
                acc = train_eval(train, test, idx, args.epochs, seed)
                rows.append({"seed": seed, "budget": name, "kept": size, "method": method, "accuracy": acc})
                print(f"seed {seed} budget {name} ({size} = {100 * size / n:.1f}%) {method:8s}: {100 * acc:.2f}% "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{args.embedding} embeddings, {args.clusters} clusters, SemDeDup eps {args.eps}, DBP tau "
          f"{args.temperature}, {n:,} training images, {args.epochs} epochs, seeds {args.seeds}; "
          f"{time.perf_counter() - t_start:.0f} s wall in all\n")
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    print("| budget | kept | method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |")
    print("|---|---:|---|" + "---:|" * (len(args.seeds) + 1))
    for b in budgets:
        for method in dict.fromkeys(r["method"] for r in rows if r["budget"] == b):
            accs = [100 * r["accuracy"] for r in rows if r["budget"] == b and r["method"] == method]
            sizes = sorted({r["kept"] for r in rows if r["budget"] == b})
            kept = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,}–{sizes[-1]:,}"
            print(f"| {b} | {kept} | {method} | " + " | ".join(f"{a:.2f}" for a in accs) +
                  f" | {np.mean(accs):.2f} ± {np.std(accs):.2f} |")
    for b in budgets:
        r_ = np.array([r["accuracy"] for r in rows if r["budget"] == b and r["method"] == "random"])
        for method in ("dbp", "dbp-random", "semdedup"):
            d = np.array([r["accuracy"] for r in rows if r["budget"] == b and r["method"] == method])
            if len(d):
                print(f"{method} vs random at budget {b}: mean difference {100 * (d - r_).mean():+.2f} points, "
                      f"ahead on {int((d > r_).sum())} of {len(d)} seeds")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
