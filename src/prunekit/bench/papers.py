"""The papers' claims as the benchmarks tested them, in the results store and the report's "papers" group.

A papers benchmark (``benchmarks/papers_*.py``) measures a paper's method and its baselines (the *arms*) at one or
more *settings* (a sparsity, a load, ...) over several seeds, and decides the paper's claim: ``held``, ``not held``,
``partly`` or ``not tested``. One :class:`PaperResult` holds one such test: the paper, the claim in one sentence,
the verdict and the numbers behind it, the budget (what the run was given) and the measured rows. Each row becomes
one :class:`~prunekit.bench.store.Run` of task ``"papers"`` (the claim, verdict, budget and seeds beside it, in its
``settings``), so ``prunekit report`` shows, per paper, its claim, the table of its rows (mean ± standard deviation
over seeds) and the verdict.

The verdicts come from one rule (:func:`compare`): per setting and baseline, the paired difference over seeds
(method − baseline, same seed) **held** when its mean is above twice its standard error, **not held** otherwise
(worse, or within noise); a claim is held when every comparison is, not held when none is, and partly otherwise.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .protocol import card_hash
from .store import Run, Store

TASK = "papers"
VERDICTS = ("held", "not held", "partly", "not tested")
_SCALAR = (bool, int, float, str, type(None))


@dataclass
class Measured:
    """One measured row: an ``arm`` (the method or a baseline) at a ``setting`` (a table column, ``""`` when
    there is one), for one ``seed`` (None when not seeded), with its scalar ``figures``."""

    arm: str
    setting: str
    seed: int | None
    figures: dict[str, Any]


@dataclass
class PaperResult:
    """One test of one paper's claim: ``verdict`` (one of :data:`VERDICTS`) and ``why`` (the numbers behind it),
    ``metrics`` (the figures the table shows, the first one the verdict reads; those in ``percent`` are
    fractions shown × 100),
    ``budget`` (what the run was given: data sizes, epochs, steps) and the measured ``rows``. ``test`` names the
    test when a paper has several (e.g. its accuracy and its speed)."""

    paper: str
    claim: str
    verdict: str
    why: str
    metrics: tuple[str, ...]
    rows: list[Measured]
    budget: dict[str, Any] = field(default_factory=dict)
    test: str = ""
    percent: tuple[str, ...] = ()

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.rows if r.seed is not None})


# ---------------------------------------------------------------------------------------------------- verdicts


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(rows: Iterable[Measured], metric: str, arm: str, baseline: str, setting: str = "") -> list[float]:
    """``arm`` − ``baseline`` on ``metric`` at ``setting``, one difference per seed both measured."""
    rows = [r for r in rows if r.setting == setting and r.figures.get(metric) is not None]
    a = {r.seed: float(r.figures[metric]) for r in rows if r.arm == arm}
    b = {r.seed: float(r.figures[metric]) for r in rows if r.arm == baseline}
    return [a[s] - b[s] for s in sorted(set(a) & set(b), key=lambda s: (s is None, s))]


def paired_verdict(diffs: list[float], margin: float = 0.0) -> str:
    """``held`` when the mean of ``diffs`` exceeds ``margin`` by more than twice its standard error, ``not held``
    otherwise; ``not tested`` with fewer than two seeds (no spread to judge by)."""
    if len(diffs) < 2:
        return "not tested"
    mean, sd = _mean_sd(diffs)
    return "held" if mean - margin > 2 * sd / math.sqrt(len(diffs)) else "not held"


def combine(verdicts: Iterable[str]) -> str:
    """One verdict from several comparisons: held if all are, not held if none is, else partly (comparisons
    that were not tested are left out; all of them not tested gives not tested)."""
    tested = [v for v in verdicts if v != "not tested"]
    if not tested:
        return "not tested"
    held = sum(v == "held" for v in tested)
    return "held" if held == len(tested) else "not held" if held == 0 else "partly"


def compare(rows: list[Measured], metric: str, arm: str, baselines: Iterable[str],
            settings: Iterable[str] | None = None, *, margin: float = 0.0, percent: bool = True) -> tuple[str, str]:
    """The verdict of "``arm`` beats each of ``baselines`` on ``metric`` (higher is better) at every setting" and
    the sentence behind it: per setting and baseline, the paired difference (mean ± sd over seeds), on how many
    seeds the arm was ahead, and that comparison's :func:`paired_verdict` (with ``margin``: the arm must beat the
    baseline by more than it; a negative margin tolerates a loss that small)."""
    settings = list(dict.fromkeys(r.setting for r in rows)) if settings is None else list(settings)
    baselines = list(baselines)
    scale, unit, digits = (100.0, " points", 1) if percent else (1.0, "", 2)
    verdicts, parts = [], []
    for setting in settings:
        for base in baselines:
            d = paired(rows, metric, arm, base, setting)
            if not d:
                continue
            v = paired_verdict(d, margin)
            verdicts.append(v)
            m, sd = _mean_sd(d)
            where = f"{setting}: " if setting else ""
            worse = len(d) > 1 and m - margin < -2 * sd / math.sqrt(len(d))
            note = v if v != "not held" else "worse" if worse else "within noise"
            spread = f" ± {scale * sd:.{digits}f}" if len(d) > 1 else ""
            ahead = "ahead" if margin == 0 else "above the margin"
            parts.append(f"{where}{arm} − {base} {scale * m:+.{digits}f}{spread}{unit} "
                         f"({ahead} on {sum(x > margin for x in d)}/{len(d)} seeds): {note}")
    if not verdicts:
        raise ValueError(f"no seed has both {arm!r} and any of {baselines} measured on {metric!r}; "
                         "nothing to compare")
    rule = "" if margin == 0 else f" (by more than {scale * margin:+.{digits}f}{unit})"
    return combine(verdicts), f"paired over seeds, held when the mean is above twice its standard error{rule}; " \
        + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- the store


def check_results(results: list[PaperResult]) -> None:
    """Refuse, with one line, a result the store and the report cannot show faithfully."""
    if not results:
        raise ValueError("no paper results to store; a papers benchmark stores at least one tested claim")
    for p in results:
        name = f"{p.paper!r}" + (f" ({p.test})" if p.test else "")
        if not p.paper or not p.claim:
            raise ValueError(f"paper result {name}: needs the paper's title and its claim")
        if p.verdict not in VERDICTS:
            raise ValueError(f"paper result {name}: verdict {p.verdict!r} is not one of {', '.join(VERDICTS)}")
        if not p.metrics:
            raise ValueError(f"paper result {name}: name at least one metric (the figure its table shows)")
        if not p.rows:
            raise ValueError(f"paper result {name}: no measured rows")
        for r in p.rows:
            bad = [k for k, v in r.figures.items() if not isinstance(v, _SCALAR)]
            if bad:
                raise ValueError(f"paper result {name}, arm {r.arm!r}: figures must be scalars; {bad} are not")
            if r.seed is not None and not isinstance(r.seed, int):
                raise ValueError(f"paper result {name}, arm {r.arm!r}: seed {r.seed!r} is not an integer")
        if not any(p.metrics[0] in r.figures for r in p.rows):
            raise ValueError(f"paper result {name}: no row holds its metric {p.metrics[0]!r}")


def store_paper_results(db: str | Path, benchmark: str, model: str, results: Iterable[PaperResult],
                        source: str = "") -> int:
    """Store every measured row of ``results`` as one run of task ``"papers"`` in the results store ``db`` (created
    if missing), keyed by the benchmark, the paper, the test, the arm, the setting and the seed (storing the same
    results again replaces their rows). ``source``: the results file they were read from. Everything is checked
    before the store is opened. Returns the number of rows written."""
    results = list(results)
    check_results(results)
    n = 0
    with Store(db) as store:
        for p in results:
            card = {"task": TASK, "benchmark": benchmark, "model": model, "paper": p.paper, "test": p.test,
                    "budget": p.budget}
            comparable = card_hash(card)[:12]
            settings = {"paper": p.paper, "test": p.test, "claim": p.claim, "verdict": p.verdict, "why": p.why,
                        "metrics": list(p.metrics), "percent": list(p.percent), "seeds": p.seeds, "budget": p.budget,
                        "source": source}
            for r in p.rows:
                config = {"label": r.arm, "setting": r.setting, "seed": r.seed, "stages": []}
                key = hashlib.sha256(json.dumps([benchmark, comparable, config], sort_keys=True,
                                                default=str).encode()).hexdigest()[:20]
                store.put(Run(key=key, recipe=benchmark, label=r.arm, task=TASK, model=model, config=config,
                              settings=settings, protocol=card, comparable=comparable, figures=dict(r.figures),
                              started=time.time()))
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------- the report


def paper_groups(runs: Iterable[Run]) -> list[list[Run]]:
    """The runs of task ``"papers"`` grouped by benchmark, paper and test, in first-seen order."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.task == TASK:
            groups.setdefault((r.recipe, r.settings.get("paper"), r.settings.get("test"), r.comparable), []).append(r)
    return list(groups.values())


def paper_table(group: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of one paper's table: an arm per row, a column per setting (and metric when there
    are several), each cell the metric's mean ± sd over seeds and how many seeds (× 100 when a percentage)."""
    s = group[0].settings
    metrics, percent = s.get("metrics") or [], set(s.get("percent") or ())
    arms = list(dict.fromkeys(r.label for r in group))
    settings = list(dict.fromkeys(r.config.get("setting", "") for r in group))
    columns = [(st, m) for st in settings for m in metrics
               if any(r.figures.get(m) is not None and r.config.get("setting", "") == st for r in group)]

    def head(st: str, m: str) -> str:
        return " ".join(x for x in (st, m if len(metrics) > 1 else "") if x) or m

    rows = []
    for arm in arms:
        row = [arm]
        for st, m in columns:
            vals = [float(r.figures[m]) for r in group
                    if r.label == arm and r.config.get("setting", "") == st and r.figures.get(m) is not None]
            if not vals:
                row.append("–")
                continue
            mean, sd = (100 * x if m in percent else x for x in _mean_sd(vals))
            digits = 1 if m in percent or abs(mean) >= 10 else 4 if abs(mean) < 1 else 2
            row.append(f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f} ({len(vals)})" if len(vals) > 1 else " (1)"))
        rows.append(row)
    return ["arm", *(head(st, m) for st, m in columns)], rows


def _budget_text(budget: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in budget.items()) or "–"


def _seeds_text(settings: dict[str, Any]) -> str:
    return ", ".join(str(x) for x in settings.get("seeds", [])) or "none"


def html_section(runs: Iterable[Run]) -> str:
    """The report's "papers" group: per paper, its claim, its verdict with the numbers behind it, the budget and
    seeds, and the table of its rows. Empty when no run is a paper's."""
    groups = paper_groups(runs)
    if not groups:
        return ""
    e = html.escape
    parts = [f"<section id='papers'><h2>papers</h2><p>{len(groups)} claim(s) of the papers prunekit comes from, each "
             "as its benchmark tested it here; cells are mean ± standard deviation over seeds (seeds in brackets). "
             "Every paper's row: docs/papers.md.</p>"]
    for i, group in enumerate(groups):
        s = group[0].settings
        title = s.get("paper", "?") + (f" — {s['test']}" if s.get("test") else "")
        cols, rows = paper_table(group)
        first = (s.get("metrics") or ["?"])[0]
        unit = " (%)" if first in (s.get("percent") or ()) else ""
        parts.append(
            f"<div class='paper' id='paper-{i}'><h3>{e(title)}</h3>"
            f"<p><b>claim</b>: {e(s.get('claim', ''))}</p>"
            f"<p class='verdict'><b>{e(s.get('verdict', '?'))}</b>: {e(s.get('why', ''))}</p>"
            f"<p>benchmark <code>{e(group[0].recipe)}</code> on {e(group[0].model)}; seeds "
            f"{e(_seeds_text(s))}; budget: {e(_budget_text(s.get('budget', {})))}"
            + (f"; rows from {e(s['source'])}" if s.get("source") else "") + "</p>"
            f"<table class='results paper'><caption>{e(first)}{unit}</caption><tr>"
            + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
            + "".join("<tr class='run'>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
            + "</table></div>")
    parts.append("</section>")
    return "\n".join(parts)


def markdown_section(runs: Iterable[Run]) -> str:
    """The "papers" group as Markdown (empty when no run is a paper's)."""
    out = []
    for group in paper_groups(runs):
        s = group[0].settings
        cols, rows = paper_table(group)
        out += [f"### {s.get('paper')}" + (f" — {s['test']}" if s.get("test") else ""), "",
                f"claim: {s.get('claim')}", "", f"**{s.get('verdict')}**: {s.get('why')}", "",
                f"seeds {_seeds_text(s)}; budget: {_budget_text(s.get('budget', {}))}", "",
                "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)
