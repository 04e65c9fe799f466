"""Diffusion benchmarks' runs in the results store, with their PNG image grids.

The diffusion benchmarks (``benchmarks/diffusion_*.py``) measure UNets sampled here: FID-FMNIST and its noise
floor, copy rates, paired MSE, MACs per step. Each (model, seed) becomes one :class:`~prunekit.bench.store.Run`
of task ``"diffusion"``; its image grids travel inside the row (``figures["grids"]``: caption → base64 PNG), so
``prunekit report`` embeds the samples with nothing else to find. A grid is a few kB (greyscale, deflated).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .protocol import card_hash, comparable_key, machine, versions
from .store import Run, Store

TASK = "diffusion"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRIDS = "grids"


@dataclass
class DiffusionRun:
    """One measured model of a diffusion benchmark: its ``label`` (the row name), the ``seed`` of the run,
    its scalar ``figures`` and its image ``grids`` (caption → PNG bytes)."""

    label: str
    seed: int | None
    figures: dict[str, Any]
    grids: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0


def _check(runs: list[DiffusionRun]) -> None:
    if not runs:
        raise ValueError("no runs to store; a diffusion benchmark stores at least one measured model")
    for r in runs:
        if not r.label:
            raise ValueError("every run needs a label (the row name in the report)")
        bad = [k for k, v in r.figures.items() if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise ValueError(f"run {r.label!r}: figures must be scalars (numbers, text, None); {bad} are not")
        if GRIDS in r.figures:
            raise ValueError(f"run {r.label!r}: {GRIDS!r} is reserved for the image grids; pass them as grids=")
        for caption, png in r.grids.items():
            if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_MAGIC):
                raise ValueError(f"run {r.label!r}: grid {caption!r} is not PNG bytes; pass the file's bytes")


def store_diffusion_runs(db: str | Path, benchmark: str, model: str, protocol: dict[str, Any],
                         runs: Iterable[DiffusionRun], *, settings: dict[str, Any] | None = None,
                         threads: int | None = None) -> int:
    """Store each of ``runs`` as one row of task ``"diffusion"`` in the results store ``db`` (created if missing),
    keyed by the benchmark, the protocol card, the label and the seed (a rerun replaces its rows). ``protocol``
    holds what decides whether two runs compare (the model's hash, the data, the evaluation's settings); the
    software versions and the machine are added (``threads``: the thread count the runs were measured with, when
    not this process's). Every run is checked before the store is opened. Returns the number of rows written."""
    runs = list(runs)
    _check(runs)
    card = {"task": TASK, "benchmark": benchmark, "model": model, "evaluation": protocol,
            "versions": versions(), "machine": machine(threads)}
    card["card_hash"] = card_hash(card)
    comparable = comparable_key(card)
    with Store(db) as store:
        for r in runs:
            config = {"label": r.label, "seed": r.seed, "stages": []}
            key = hashlib.sha256(json.dumps([benchmark, comparable, config], sort_keys=True,
                                            default=str).encode()).hexdigest()[:20]
            figures = dict(r.figures)
            if r.grids:
                figures[GRIDS] = {c: base64.b64encode(bytes(png)).decode() for c, png in r.grids.items()}
            store.put(Run(key=key, recipe=benchmark, label=r.label, task=TASK, model=model, config=config,
                          settings=settings or {}, protocol=card, comparable=comparable, figures=figures,
                          started=time.time(), seconds=float(r.seconds)))
    return len(runs)
