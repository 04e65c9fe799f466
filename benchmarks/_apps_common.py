"""What the apps_* benchmarks share: a mean ± sample standard deviation, the results file, and rows in the
results store (one Run per configuration and seed) so `prunekit results` and the report read them."""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def spread(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max, and how many."""
    v = [float(x) for x in values]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


def fmt(s: dict[str, float], digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def write_results(name: str, payload: dict[str, Any], db: str | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (whole, then renamed in) and, with ``db``, one store row per
    entry of ``payload["runs"]`` (each a dict with ``label``, ``seed`` and ``figures``)."""
    from prunekit.infra.atomic import atomic_file

    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}, **payload}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if db:
        from prunekit.bench.store import Run, Store

        protocol = {"benchmark": name, **payload.get("settings", {})}
        comparable = hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]
        with Store(db) as store:
            for r in payload.get("runs", []):
                config = {"label": r["label"], "seed": r.get("seed"), "stages": []}
                key = hashlib.sha256(json.dumps([protocol, config], sort_keys=True, default=str).encode()).hexdigest()[:20]
                store.put(Run(key=key, recipe=name, label=r["label"], task=payload.get("task", name),
                              model=payload.get("model", ""), config=config, settings=payload.get("settings", {}),
                              protocol=protocol, comparable=comparable, figures=r["figures"],
                              seconds=float(r.get("seconds", 0.0))))
    return path


def append_rows(path: Path, rows: Iterable[dict[str, Any]], config: dict[str, Any], leave_out: Iterable[str] = ()) -> None:
    """Append ``rows`` to the JSON-lines file ``path``, each with the run's settings (``config`` — a script's
    ``vars(args)`` — less ``leave_out``; paths as strings) under ``"config"``."""
    skip = set(leave_out)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in config.items() if k not in skip}
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "config": settings}) + "\n")

