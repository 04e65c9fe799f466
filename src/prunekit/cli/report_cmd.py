"""``prunekit report``: one self-contained HTML page (tables, protocol cards, Pareto and per-layer
plots, nothing fetched to view it) or Markdown tables, from the results store."""

from __future__ import annotations

import argparse

from .common import add_common, emit, say


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("report", help="an HTML page (or Markdown) of the stored runs", description=__doc__)
    p.add_argument("--db", default=None, help="results store (default prunekit-results.db)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables instead of writing HTML")
    p.add_argument("--per-seed", action="store_true",
                   help="with --markdown: one table per seed instead of runs averaged over seeds (mean ± sd)")
    p.add_argument("--where", nargs="*", default=[], metavar="FIELD=VALUE", help="as in prunekit results")
    p.add_argument("--title", default="prunekit report")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench import DEFAULT_DB, Store
    from ..bench.report import html_report, markdown
    from ..bench.store import parse_where

    db = args.db or DEFAULT_DB
    if not Path(db).exists():
        raise FileNotFoundError(f"no results store at {db}; run a recipe first (prunekit run recipes/...)")
    with Store(db) as store:
        runs = store.runs(parse_where(args.where))
    if not runs:
        raise ValueError(f"no stored run in {db} matches; nothing to report")
    if args.markdown:
        text = markdown(runs, by_seed=not args.per_seed)
        emit(args, {"db": db, "markdown": text}, text)
        return 0
    out = Path(args.out)
    page = html_report(runs, args.title)
    from ..core.atomic import atomic_file

    with atomic_file(out) as tmp:  # unique temporary beside it, umask permissions, renamed into place
        tmp.write_text(page)
    say(args, f"wrote {out} ({len(runs)} runs, {len(page) / 1e3:.0f} kB)")
    emit(args, {"db": db, "out": str(out), "runs": len(runs)}, f"report: {out}")
    return 0
