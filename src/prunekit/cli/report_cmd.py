"""``prunekit report``: one self-contained HTML page (tables, protocol cards, Pareto and per-layer
plots, nothing fetched to view it) or Markdown tables, from the results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common, emit, say, warn


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("report", help="an HTML page (or Markdown) of the stored runs", description=__doc__)
    p.add_argument("--db", default=None, help="results store (default prunekit-results.db)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a report prunekit wrote (any other file is never replaced)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables instead of writing HTML")
    p.add_argument("--per-seed", action="store_true",
                   help="with --markdown: one table per seed instead of runs averaged over seeds (mean ± sd)")
    p.add_argument("--where", nargs="*", default=[], metavar="FIELD=VALUE", help="as in prunekit results")
    p.add_argument("--title", default="prunekit report")
    add_common(p)
    p.set_defaults(func=run)


def check_report_out(out: Path, db: str, overwrite: bool) -> None:
    """Refuse, before the store is read, an ``--out`` that is an input, a folder, or an existing file that is
    not a report prunekit wrote (and, without ``--overwrite``, any existing file)."""
    from ..bench.report import is_prunekit_report
    from ..infra.atomic import OutputError, check_distinct

    check_distinct({"--out": out}, {"--db": db})
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name the HTML file to write")
    if not out.exists() and not out.is_symlink():
        return
    if not is_prunekit_report(out):
        raise OutputError(f"--out {out} exists and is not a report prunekit wrote; it is never replaced, even "
                          "with --overwrite. Choose another file name")
    if not overwrite:
        raise OutputError(f"--out {out} exists (a report prunekit wrote); pass --overwrite to replace it, "
                          "or choose another file name")


def run(args: argparse.Namespace) -> int:
    from ..bench import DEFAULT_DB, Store
    from ..bench.report import html_report, markdown
    from ..bench.store import parse_where

    db = args.db or DEFAULT_DB
    out = Path(args.out)
    if not args.markdown:
        check_report_out(out, db, args.overwrite)
    if not Path(db).exists():
        raise FileNotFoundError(f"no results store at {db}; run a recipe first (prunekit run recipes/...)")
    with Store(db) as store:
        runs = store.runs(parse_where(args.where))
    from ..bench.report import mixed_counters_note

    if note := mixed_counters_note(runs):
        warn(args, note)  # (the page and the Markdown say it too)
    if not runs:
        raise ValueError(f"no stored run in {db} matches; nothing to report")
    if args.markdown:
        text = markdown(runs, by_seed=not args.per_seed)
        emit(args, {"db": db, "markdown": text}, text)
        return 0
    page = html_report(runs, args.title)
    from ..infra.atomic import atomic_file

    with atomic_file(out) as tmp:  # unique temporary beside it, umask permissions, renamed into place
        tmp.write_text(page)
    say(args, f"wrote {out} ({len(runs)} runs, {len(page) / 1e3:.0f} kB)")
    emit(args, {"db": db, "out": str(out), "runs": len(runs)}, f"report: {out}")
    return 0
