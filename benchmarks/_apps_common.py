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



# ------------------------------------------------------------------ the papers_* benchmarks in the results store
# One idiom for every papers_*.py: it names the shapes of the rows it writes (``SHAPES``: a row's kind → the keys
# such a row always has; ``KIND``: the key the kind is read from), turns its rows into the papers' tested claims
# (``paper_results(rows)`` → prunekit.bench.papers.PaperResult), and with ``--db`` stores them through
# :func:`store_papers` — after a run, or from the results files alone (``--table --db``; benchmarks/papers_store.py
# does every file at once), so nothing is re-run to see the numbers in ``prunekit report``.

LEAVE_OUT = ("seeds", "out", "table", "merge", "db", "cache")


def read_rows(paths: Iterable[Path], benchmark: str, shapes: dict[str, set[str]], kind: str | None) -> list[dict]:
    """Every row of the JSON-lines ``paths`` written by ``benchmarks/<benchmark>.py``; a file of another shape (not
    JSON lines, a row of a kind it does not write, a row without the keys its kind has) is refused with one line."""
    hint = f"pass a JSON-lines file benchmarks/{benchmark}.py wrote (its --out); nothing was stored"
    rows: list[dict] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"{path}: no such results file; run benchmarks/{benchmark}.py first or {hint}")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n} is not one JSON object per line; {hint}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n} is a JSON {type(row).__name__}, not a row (an object); {hint}")
            what = row.get(kind) if kind else "row"
            if not isinstance(what, str) or what not in shapes:
                raise ValueError(f"{path}:{n}: {kind!r} is {what!r}, not one of the kinds {benchmark}.py writes "
                                 f"({', '.join(shapes)}); {hint}")
            missing = sorted(shapes[what] - set(row))
            if missing:
                raise ValueError(f"{path}:{n}: a {what!r} row of {benchmark}.py has {', '.join(missing)}, this one "
                                 f"does not; {hint}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))}: no rows; {hint}")
    return rows


def budget_of(rows: Iterable[dict], leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The settings every row with a ``config`` ran with (those that differ between rows, and ``LEAVE_OUT``'s and
    ``leave_out``'s, left out): the budget beside a paper's result."""
    configs = [r["config"] for r in rows if isinstance(r.get("config"), dict)]
    skip = set(LEAVE_OUT) | set(leave_out)
    return {k: v for k, v in (configs[0] if configs else {}).items()
            if k not in skip and all(c.get(k) == v for c in configs)}


def papers_from_files(paths: Iterable[Path], benchmark: str, shapes: dict[str, set[str]], kind: str | None,
                      convert) -> list:
    """Read ``paths`` (:func:`read_rows`) and turn the rows into tested claims (``convert``: the script's
    ``paper_results``), checked as the store would check them; a file of another shape is one ValueError line."""
    from prunekit.bench.papers import check_results

    paths = [Path(p) for p in paths]
    rows = read_rows(paths, benchmark, shapes, kind)
    try:
        results = convert(rows)
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"{', '.join(map(str, paths))}: rows of benchmarks/{benchmark}.py could not be read "
                         f"({type(exc).__name__}: {exc}); pass the file it wrote; nothing was stored") from None
    check_results(results)
    return results


def store_papers(db: str, benchmark: str, model: str, paths: Iterable[Path], shapes: dict[str, set[str]],
                 kind: str | None, convert) -> int:
    """:func:`papers_from_files`, then one run per measured row in the store ``db``; returns how many. Bad input
    stops before the store is opened."""
    from prunekit.bench.papers import store_paper_results

    paths = [Path(p) for p in paths]
    results = papers_from_files(paths, benchmark, shapes, kind, convert)
    return store_paper_results(db, benchmark, model, results, source=", ".join(p.name for p in paths))


def store_papers_or_exit(db: str | None, benchmark: str, model: str, paths: Iterable[Path],
                         shapes: dict[str, set[str]], kind: str | None, convert) -> None:
    """A papers benchmark's ``--db``: :func:`store_papers` when given, bad input as one ``error:`` line and exit."""
    if not db:
        return
    try:
        n = store_papers(db, benchmark, model, paths, shapes, kind, convert)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"stored {n} rows of {', '.join(str(p) for p in paths)} in {db}")
