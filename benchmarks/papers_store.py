"""The papers benchmarks' measured rows (and the apps benchmarks', with the claims they test: apps_papers.py) in
prunekit's results store, without re-running anything, so
``prunekit report`` shows its "papers" group: per paper, its claim, the table of its rows (mean ± sd over seeds) and
whether the claim held.

Each papers_*.py writes JSON lines under benchmarks/results/; this reads the files the README's tables come from and
stores them through the script's own ``paper_results`` (the same path as ``papers_<name>.py --table --db FILE``).
A file of another shape is refused with one line, and nothing is stored from it.

    python benchmarks/papers_store.py --db prunekit-results.db
    prunekit report --db prunekit-results.db --out papers.html

``--only tas vit`` stores some of them; ``--file PATH`` (with one ``--only``) reads another results file instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import apps_papers
from _apps_common import RESULTS, papers_from_files

from prunekit.bench.papers import store_paper_results

# benchmark → the result files behind the README's tables (each stored as one source)
FILES = {"tas": [["papers_tas.jsonl"], ["papers_tas_kd8.jsonl"], ["papers_tas_kd15.jsonl"]],
         "regimes": [["papers_regimes.jsonl"], ["papers_regimes_epochs.jsonl"], ["papers_regimes_hot.jsonl"]],
         "vit": [["papers_vit.jsonl"], ["papers_vit_deit_time.jsonl"]],
         "criteria": [["papers_criteria.jsonl", "papers_criteria_bn_lam0.1.jsonl", "papers_criteria_bn_lam0.01.jsonl",
                       "papers_criteria_bn_lam0.001.jsonl", "papers_criteria_bn_lam0.1_ft5.jsonl",
                       "papers_criteria_bn_lam0.01_ft5.jsonl", "papers_criteria_bn_lam0.001_ft5.jsonl"]],
         "init": [["papers_init.jsonl"]],
         "lapp": [["papers_lapp.jsonl"]],
         "finercut": [["papers_finercut.jsonl"]],
         **{name: [[f"{name}.json"]] for name in apps_papers.CLAIMS}}


def benchmark(name: str) -> str:
    """The benchmark script's name (the recipe its rows are stored under)."""
    return name if name in apps_papers.CLAIMS else f"papers_{name}"


def load(name: str, paths: list[Path]) -> tuple[str, list]:
    """The model and the tested claims of ``paths`` (files benchmarks/papers_<name>.py or <name>.py wrote), checked."""
    if name in apps_papers.CLAIMS:
        if len(paths) != 1:
            raise ValueError(f"{name} writes one JSON file; pass one --file")
        return apps_papers.load(name, paths[0])
    module = importlib.import_module(f"papers_{name}")
    kind = {"tas": "arm", "regimes": "kind", "lapp": "arm", "finercut": "arm"}.get(name, "part")
    return module.MODEL, papers_from_files(paths, f"papers_{name}", module.SHAPES, kind, module.paper_results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="the results store (created if missing)")
    ap.add_argument("--only", nargs="+", choices=sorted(FILES), default=None)
    ap.add_argument("--file", type=Path, nargs="+", default=None,
                    help="with one --only: read these results files instead of the default ones")
    args = ap.parse_args(argv)
    names = args.only or list(FILES)
    if args.file and len(names) != 1:
        ap.error("--file needs exactly one --only (which benchmark wrote the file)")
    jobs = [(n, list(args.file)) for n in names] if args.file else \
        [(n, [RESULTS / f for f in files]) for n in names for files in FILES[n]]
    try:  # every file is read and checked before anything goes into the store
        loaded = [(name, paths, *load(name, paths)) for name, paths in jobs]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name, paths, model, results in loaded:
        source = ", ".join(p.name for p in paths)
        n = store_paper_results(args.db, benchmark(name), model, results, source=source)
        print(f"{benchmark(name)}: stored {n} rows ({len(results)} tested claims) of {source} in {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
