"""``prunekit run``: run a recipe (model, data, stages × sweep × seeds, measurements) into the results
store; finished runs are skipped, so a killed sweep resumes where it stopped."""

from __future__ import annotations

import argparse

from .common import add_common, emit, say


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("run", help="run a recipe into the results store (resumes; --force reruns)",
                        description=__doc__)
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--db", default=None, help="results store (default prunekit-results.db)")
    p.add_argument("--force", action="store_true", help="run again the runs already in the store")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and which are stored) without running")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import DEFAULT_DB, Store
    from ..bench import run as run_recipe
    from ..bench.runner import run_key
    from ..bench.tasks import make_context
    from ..recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe)  # every field checked before any model is loaded
    db = args.db or DEFAULT_DB
    if args.dry_run:
        identity = make_context(recipe.task, progress=False, say=lambda t: None).identity()
        with Store(db) as store:
            rows = [{"label": s.label, "seed": s.seed, "key": run_key(s, identity),
                     "stored": store.has(run_key(s, identity))} for s in recipe.runs()]
        text = "\n".join(f"{'stored ' if r['stored'] else 'to run '} {r['label']} (seed {r['seed']})" for r in rows)
        emit(args, {"recipe": recipe.name, "runs": rows}, text)
        return 0
    runs = run_recipe(recipe, db=db, force=args.force, progress=not (args.quiet or args.json),
                      say=lambda t: say(args, t))
    failed = [r for r in runs if r.status != "ok"]
    from ..bench.report import markdown

    text = markdown([r for r in runs if r.status == "ok"]) + (
        f"\n{len(failed)} run(s) failed: " + "; ".join(f"{r.label}: {r.error.splitlines()[0]}" for r in failed)
        if failed else "")
    emit(args, {"recipe": recipe.name, "db": db, "runs": [r.to_dict() for r in runs]}, text)
    return 1 if failed else 0
