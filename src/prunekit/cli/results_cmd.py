"""``prunekit results``: query the results store (``--where method=wanda sparsity=0.5``)."""

from __future__ import annotations

import argparse

from .common import add_common, emit, warn


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("results", help="query the results store", description=__doc__)
    p.add_argument("--db", default=None, help="results store (default prunekit-results.db)")
    p.add_argument("--where", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="keep runs whose field equals the value (a|b for either), e.g. method=wanda recipe=x")
    p.add_argument("--failed", action="store_true", help="include failed runs")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench import DEFAULT_DB, Store
    from ..bench.report import markdown
    from ..bench.store import parse_where

    db = args.db or DEFAULT_DB
    if not Path(db).exists():
        raise FileNotFoundError(f"no results store at {db}; run a recipe first (prunekit run recipes/...)")
    where = parse_where(args.where)
    with Store(db) as store:
        runs = store.runs(where, include_failed=args.failed)
    from ..bench.report import mixed_counters_note

    if note := mixed_counters_note(runs):
        warn(args, note)
    emit(args, {"db": db, "where": where, "runs": [r.to_dict() for r in runs]},
         markdown(runs) if runs else f"no run in {db} matches {where or 'anything'}")
    return 0
