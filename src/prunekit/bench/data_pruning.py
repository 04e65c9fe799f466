"""One data-pruning comparison: train the same model with the same schedule on subsets kept by
several strategies, and measure test accuracy and what each score cost. Used by
``prunekit data bench`` and ``benchmarks/data_pruning.py`` (benchmark code: it lives in ``bench/``,
which knows the library and is known by nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.distill import fit_distilled
from ..data.embed import feature_extractor
from ..data.loop import fit_sampled
from ..data.samplers import RS2Sampler, SubsetSampler
from ..data.scores import score
from ..data.select import select
from ..metrics.accuracy import accuracy

BENCH_METHODS = ("random", "el2n", "ccs", "prototypes", "rs2", "ccs+kd")


@dataclass
class PruningComparison:
    """Results: one row per (method, kept fraction), plus the full-data baseline and score times."""

    rows: list[dict] = field(default_factory=list)
    score_seconds: dict[str, float] = field(default_factory=dict)
    full_accuracy: float = float("nan")
    full_seconds: float = float("nan")

    def table(self) -> str:
        """A markdown table: test accuracy (%) per method and kept fraction."""
        fractions = sorted({r["keep"] for r in self.rows}, reverse=True)
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        acc = {(r["method"], r["keep"]): r["accuracy"] for r in self.rows}
        lines = ["| method | " + " | ".join(f"{f:.0%} kept" for f in fractions) + " |",
                 "|---|" + "---:|" * len(fractions)]
        lines += [f"| {m} | " + " | ".join(f"{100 * acc[(m, f)]:.2f}" if (m, f) in acc else "–" for f in fractions) + " |"
                  for m in methods]
        if self.full_accuracy == self.full_accuracy:  # not NaN: the baseline was trained
            lines.append(f"| full data (100%) | {100 * self.full_accuracy:.2f} |" + " |" * (len(fractions) - 1))
        return "\n".join(lines)


def compare_pruning(train: Dataset, test: Dataset, model_fn: Callable[[], nn.Module], *,
                    fractions: tuple[float, ...] = (0.5, 0.3, 0.1), methods: tuple[str, ...] = BENCH_METHODS,
                    epochs: int = 5, score_epochs: float = 1.0, n_models: int = 2, n_clusters: int = 50,
                    ccs_beta: float = 0.1, lr: float = 0.05, batch_size: int = 128, seed: int = 0,
                    full_baseline: bool = True, progress: bool = True, log: Callable[[str], None] = lambda s: None) -> PruningComparison:
    """Train ``model_fn()`` for ``epochs`` over each kept subset (RS2: the same number of steps over a
    fresh subset each epoch) and report test accuracy. EL2N (Paul et al. 2021) comes from ``n_models``
    proxies trained ``score_epochs``; CCS (Zheng et al. 2023) stratifies the EL2N scores after cutting
    the hardest ``ccs_beta``; prototypes (Sorscher et al. 2022) clusters the features of the full-data
    model, which is also the teacher of ``ccs+kd`` (Ben-Baruch et al. 2024; soft weight 1 − kept fraction).
    ``full_baseline=False`` skips training on all the data when no method needs that model."""
    unknown = set(methods) - set(BENCH_METHODS)
    if unknown:
        raise ValueError(f"unknown benchmark method(s) {sorted(unknown)}; choose from {', '.join(BENCH_METHODS)}")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"kept fractions must be in (0, 1], got {f}")
    n = len(train)  # type: ignore[arg-type]
    out = PruningComparison()

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        return model_fn()

    def train_on(sampler: SubsetSampler | RS2Sampler) -> tuple[float, int]:
        model = fresh()
        steps = len(fit_sampled(model, train, sampler, epochs=epochs, lr=lr, batch_size=batch_size, progress=progress))
        return accuracy(model, test), steps

    teacher = None
    if full_baseline or {"prototypes", "ccs+kd"} & set(methods):
        t0 = time.perf_counter()
        teacher = fresh()
        fit_sampled(teacher, train, SubsetSampler(np.arange(n), seed=seed), epochs=epochs, lr=lr,
                    batch_size=batch_size, progress=progress)
        out.full_seconds = time.perf_counter() - t0
        out.full_accuracy = accuracy(teacher, test)
        log(f"full data: {100 * out.full_accuracy:.2f}% ({out.full_seconds:.0f} s)")

    scores: dict[str, np.ndarray] = {}
    if {"el2n", "ccs", "ccs+kd"} & set(methods):
        t0 = time.perf_counter()
        scores["el2n"] = score(train, "el2n", model_fn=model_fn, epochs=score_epochs, n_models=n_models, lr=lr,
                               batch_size=batch_size, seed=seed, progress=progress)
        out.score_seconds["el2n"] = time.perf_counter() - t0
    if "prototypes" in methods:
        t0 = time.perf_counter()
        scores["prototypes"] = score(train, "prototypes", embed_fn=feature_extractor(teacher), n_clusters=n_clusters,
                                     seed=seed, progress=progress)
        out.score_seconds["prototypes"] = time.perf_counter() - t0
    for name, secs in out.score_seconds.items():
        log(f"score {name}: {secs:.1f} s")

    for keep in fractions:
        for method in methods:
            t0 = time.perf_counter()
            if method == "rs2":
                acc, steps = train_on(RS2Sampler(n, keep, seed=seed))
            elif method == "ccs+kd":
                idx = select(scores["el2n"], keep, "ccs", seed=seed, beta=ccs_beta)
                student = fresh()
                steps = len(fit_distilled(student, teacher, train, idx, alpha=1 - keep, epochs=epochs, lr=lr,
                                          batch_size=batch_size, seed=seed, progress=progress))
                acc = accuracy(student, test)
            else:
                if method == "random":
                    idx = select(np.zeros(n), keep, "random", seed=seed)
                elif method == "ccs":
                    idx = select(scores["el2n"], keep, "ccs", seed=seed, beta=ccs_beta)
                else:
                    idx = select(scores[method], keep, "hardest", seed=seed)
                acc, steps = train_on(SubsetSampler(idx, seed=seed))
            row = {"method": method, "keep": keep, "accuracy": acc, "steps": steps,
                   "train_seconds": time.perf_counter() - t0}
            out.rows.append(row)
            log(f"{method:>10} keep {keep:.0%}: {100 * acc:.2f}% ({steps} steps, {row['train_seconds']:.0f} s)")
    return out
