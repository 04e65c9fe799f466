"""Pruning during training on Fashion-MNIST: accuracy at high sparsity against wall time.

Compares, at each sparsity, one-shot magnitude pruning + fine-tuning, gradual magnitude pruning
(Zhu & Gupta), iterative magnitude pruning with rewinding (3 rounds; Frankle et al.) and its control
(the same mask with random re-initialization; it reuses the search, so its time is its training only), static random ERK sparse training, GraNet, and a
sparse soup of 3 fine-tuned copies. A dense model is pre-trained once (``--epochs``); one-shot,
gradual and the soup start from it and train ``--finetune-epochs``; the from-scratch methods get
``--epochs + --finetune-epochs``; IMP trains ``--epochs`` per round plus a final ``--epochs``.

    python benchmarks/training_time.py --train-limit 10000 --epochs 2 --finetune-epochs 2

Writes a markdown table (stdout and ``--table``), a JSON file (``--json``) and a PNG plot (``--plot``).
Times are wall-clock and process CPU seconds (the CPU figure is steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit import prune_
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.train import GraNet, Gradual, find_ticket_, fit, sparse_init_, sparse_soup, steps_per_run
from prunekit.train.state import replace_masks_

METHODS = ("one-shot + fine-tune", "gradual", "IMP rewind (3 rounds)", "IMP mask, random re-init",
           "random ERK (static)", "GraNet", "soup of 3")


class LeNet(nn.Module):
    """A LeNet-style CNN for 28×28 grey images: two 5×5 convolutions, two linear layers."""

    def __init__(self, widths: tuple[int, int] = (8, 16), hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        a, b = widths
        self.features = nn.Sequential(nn.Conv2d(1, a, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(a, b, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(b * 16, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.features(x).flatten(1))))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-limit", type=int, default=60000, help="training examples (first N)")
    p.add_argument("--test-limit", type=int, default=10000, help="test examples (first N)")
    p.add_argument("--epochs", type=float, default=10, help="dense pre-training epochs (and per IMP round)")
    p.add_argument("--finetune-epochs", type=float, default=10, help="epochs after one-shot pruning")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.95])
    p.add_argument("--widths", type=int, nargs=2, default=[8, 16])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="subset of: " + ", ".join(METHODS))
    p.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--plot", type=Path, default=Path("docs/img/training_time.png"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--from-json", type=Path, default=None, help="re-render table and plot from a saved --json; no training")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(markdown(saved["rows"]))
        plot(saved["rows"], args.plot)
        return saved
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; known: {list(METHODS)}")
    for s in args.sparsities:
        if not 0 < s < 1:
            p.error(f"sparsities must be in (0, 1), got {s}")
    if args.threads:
        torch.set_num_threads(args.threads)

    train = load_fashion_mnist("train", limit=args.train_limit)
    test = load_fashion_mnist("test", limit=args.test_limit)
    E, F, bs, lr = args.epochs, args.finetune_epochs, args.batch_size, args.lr
    show = not args.quiet

    def new_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return LeNet(tuple(args.widths), args.hidden)

    def train_(model: nn.Module, epochs: float, seed: int, on_step=None, lr_: float = lr) -> None:
        fit(model, train, epochs=epochs, lr=lr_, batch_size=bs, seed=seed, progress=False, on_step=on_step)

    rows: list[dict] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    dense = new_model(args.seed)
    train_(dense, E, args.seed)
    rows.append({"method": "dense", "sparsity": 0.0, "accuracy": accuracy(dense, test),
                 "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0, "epochs": E})
    bar = tqdm(total=len(args.sparsities) * len(args.methods), desc="runs", disable=not show)
    for s in args.sparsities:
        for method in args.methods:
            bar.set_postfix_str(f"{method} @ {s:.0%}")
            start, cpu = time.perf_counter(), time.process_time()
            model, epochs, extra = run_method(method, s, dense, new_model, train_, args, train, test)
            row = {"method": method, "sparsity": s, "accuracy": accuracy(model, test),
                   "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                   "epochs": epochs, **extra}
            rows.append(row)
            bar.update(1)
            if show:
                tqdm.write(f"{method:<28} {s:.0%}  acc {row['accuracy']:.4f}  {row['seconds']:.1f} s "
                           f"(CPU {row['cpu_seconds']:.1f} s)")
    bar.close()
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows, "total_seconds": time.perf_counter() - t0}
    table = markdown(rows)
    print(table)
    if args.table:
        _write(args.table, table + "\n")
    if args.json:
        _write(args.json, json.dumps(result, indent=2))
    plot(rows, args.plot)
    return result


_TICKETS: dict[float, tuple[nn.Module, object]] = {}


def run_method(method: str, s: float, dense: nn.Module, new_model, train_, args, train,
               test) -> tuple[nn.Module, float, dict]:
    """Run one method at sparsity ``s``; returns the trained sparse model, its training epochs and extras."""
    E, F, seed = args.epochs, args.finetune_epochs, args.seed
    if method == "one-shot + fine-tune":
        model = copy.deepcopy(dense)
        prune_(model, "magnitude", s, allocation="global", progress=False)
        train_(model, F, seed + 1)
        return model, F, {}
    if method == "gradual":
        model = copy.deepcopy(dense)
        steps = steps_per_run(train, epochs=F, batch_size=args.batch_size)
        end = max(2, int(0.75 * steps))
        g = Gradual(model, s, start_step=0, end_step=end, every=max(1, end // 15), allocation="global")
        train_(model, F, seed + 1, on_step=lambda _: g.step())
        return model, F, {}
    if method in ("IMP rewind (3 rounds)", "IMP mask, random re-init"):
        # The control reuses the ticket's mask (the search is run once per sparsity, cached); its time
        # and epochs count only its own training.
        if s not in _TICKETS:
            model = new_model(seed)
            steps = steps_per_run(train, epochs=E, batch_size=args.batch_size)
            ticket = find_ticket_(model, lambda m, on_step: train_(m, E, seed, on_step), rounds=3,
                                 sparsity=s, rewind="early:0.02", steps=steps, allocation="global")
            _TICKETS[s] = (model, ticket)
        model, ticket = _TICKETS[s]
        if method == "IMP mask, random re-init":
            model = new_model(seed + 100)
            replace_masks_(model, ticket.masks)
            train_(model, E, seed)
            return model, E, {}
        model = copy.deepcopy(model)
        train_(model, E, seed)
        return model, 4 * E, {"rewind_step": ticket.rewind_step}
    if method == "random ERK (static)":
        model = new_model(seed)
        sparse_init_(model, s, allocation="erk", seed=seed)
        train_(model, E + F, seed)
        return model, E + F, {}
    if method == "GraNet":
        model = new_model(seed)
        steps = steps_per_run(train, epochs=E + F, batch_size=args.batch_size)
        end = max(2, int(0.75 * steps))
        data = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                           generator=torch.Generator().manual_seed(seed))
        dyn = GraNet(model, s, data=data, initial_sparsity=0.0, start_step=0, end_step=end,
                     update_every=max(1, end // 15), drop_fraction=0.3)
        train_(model, E + F, seed, on_step=lambda _: dyn.step())
        return model, E + F, {}
    if method == "soup of 3":
        pruned = copy.deepcopy(dense)
        prune_(pruned, "magnitude", s, allocation="global", progress=False)
        soup = sparse_soup(pruned, lambda m, sd: train_(m, F, sd), seeds=(seed + 1, seed + 2, seed + 3),
                           eval_fn=lambda m: accuracy(m, test))
        return soup.model, 3 * F, {"ingredients": soup.ingredient_scores}
    raise ValueError(f"unknown method {method!r}")


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table: one row per method, a column pair per sparsity."""
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    head = "| method | train epochs | " + " | ".join(
        f"acc @ {s:.0%} | wall / CPU s @ {s:.0%}" for s in sparsities) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sparsities))]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        epochs = next(r["epochs"] for r in rows if r["method"] == method)
        for s in sparsities:
            r = next((r for r in rows if r["method"] == method and (r["sparsity"] == s or method == "dense")), None)
            if r is None:
                cells += ["", ""]
                continue
            acc = f"{r['accuracy']:.4f}"
            if "ingredients" in r:
                acc += f" (ingredients {min(r['ingredients']):.4f}–{max(r['ingredients']):.4f})"
            cells += [acc, f"{r['seconds']:.1f} / {r['cpu_seconds']:.1f}"]
        lines.append(f"| {method} | {epochs:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Two panels of grouped bars: test accuracy, and CPU seconds, per method and sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    dense = next((r for r in rows if r["method"] == "dense"), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(len(sparsities), 1)
    for j, s in enumerate(sparsities):
        acc = [next((r["accuracy"] for r in rows if r["method"] == m and r["sparsity"] == s), 0) for m in methods]
        cpu = [next((r.get("cpu_seconds", r["seconds"]) for r in rows if r["method"] == m and r["sparsity"] == s), 0)
               for m in methods]
        xs = [i + (j - (len(sparsities) - 1) / 2) * width for i in range(len(methods))]
        axes[0].bar(xs, acc, width, label=f"sparsity {s:.0%}")
        axes[1].bar(xs, cpu, width, label=f"sparsity {s:.0%}")
    if dense is not None:
        axes[0].axhline(dense["accuracy"], color="black", ls="--", lw=1, label="dense")
    for ax, title in zip(axes, ("test accuracy", "CPU seconds")):
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fashion-MNIST, LeNet-style CNN: pruning during training")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    main()
