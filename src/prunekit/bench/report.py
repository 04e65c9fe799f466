"""Reports of stored runs: one self-contained HTML page (plots embedded, nothing fetched) or Markdown.

Runs are grouped by their protocol's comparable key: runs measured under different protocols (other
evaluation windows, sequence length, tokenizer, model file, library versions, thread count) never
share a table or a plot, and the page says so. Each group shows its protocol card beside its table,
Pareto plots of quality against sparsity, MACs and latency (and against decode speed measured in llama.cpp
where runs carry it: :data:`ENGINE_SPEED`), and per-layer sparsity. Runs of a task without one quality figure
(the diffusion benchmarks' and the applications') get a table of every scalar figure they hold, averaged over
seeds where several ran, and their PNG image grids (``figures["grids"]``: caption → base64 PNG) are embedded.
The papers benchmarks' runs (task ``"papers"``) form one "papers" group instead: per paper, its claim, its verdict
and its table (:mod:`prunekit.bench.papers`).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable

from .store import Run

QUALITY = {"lm": ("perplexity", "perplexity", False), "classify": ("accuracy", "accuracy", True)}
# A run's decode speed measured in llama.cpp on its GGUF file (prunekit.metrics.engine_speed) and its spread
# (IQR / median): the x axis of the engine Pareto plot, where masks on dense kernels show what they buy.
ENGINE_SPEED = "llama_cpp_decode_tokens_per_s"
ENGINE_SPREAD = "llama_cpp_decode_spread"


def _series(run: Run) -> str:
    """The name of the line a run belongs to: its stages without the swept sparsity."""
    parts = []
    for stage in run.config.get("stages", []):
        kind = stage.get("stage")
        if kind == "prune":
            bits = [stage.get("method", "?")]
            if stage.get("pattern") not in (None, "unstructured"):
                bits.append(stage["pattern"])
            if stage.get("allocation") not in (None, "uniform"):
                bits.append(stage["allocation"])
            parts.append(" ".join(bits))
        elif kind not in ("finalize",):
            parts.append(kind)
    return " + ".join(parts) or "dense"


def group_runs(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by comparable protocol, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(f"{r.task}|{r.comparable}", []).append(r)
    return list(groups.values())


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "int":
        return f"{v:,}"
    if kind == "M":
        return f"{v / 1e6:.2f} M"
    if kind == "MB":
        return f"{v / 1e6:.1f} MB"
    if kind == "s":
        return f"{v:.1f} s"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _scalar_keys(group: list[Run]) -> list[str]:
    """The scalar figures of a group's runs, in first-seen order (image grids and nested records left out)."""
    keys: dict[str, None] = {}
    for r in group:
        for k, v in r.figures.items():
            if v is None or isinstance(v, (bool, int, float, str)):
                keys.setdefault(k)
    return list(keys)


def figure_rows(group: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of a group whose task has no single quality figure: every scalar figure."""
    keys = _scalar_keys(group)
    return (["run", "seed", *keys],
            [[r.label, str(r.config.get("seed")), *(_fmt(r.figures.get(k), "") for k in keys)] for r in group])


def grids(group: list[Run]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of every image grid the group's runs carry, in run order."""
    return [(cap, b64) for r in group for cap, b64 in (r.figures.get("grids") or {}).items()]


def table_rows(group: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows of a group's table."""
    task = group[0].task
    if task not in QUALITY:
        return figure_rows(group)
    qkey, qname, _ = QUALITY[task]
    cols = ["run", "seed", "sparsity in scope", qname, "params", "non-zeros", "eff. MACs", "stored sparse",
            "latency", "vs dense", "prune wall / CPU"]
    with_gen = any("tokens_per_s" in r.figures for r in group)
    if with_gen:
        cols.append("tokens/s")
    with_mem = any("memory_added_bytes" in r.figures for r in group)
    if with_mem:
        cols.append("memory added")
    with_engine = any(ENGINE_SPEED in r.figures for r in group)
    if with_engine:
        cols.append("llama.cpp decode tok/s")
    rows = []
    for r in group:
        f = r.figures
        lat = "–"
        if f.get("latency_ms") is not None:
            lat = f"{f['latency_ms']:.1f} ±{f.get('latency_iqr_ms', 0) / 2:.1f} ms"
            if f.get("latency_why"):
                lat += f" ({f['latency_why']})"
        ratio = "–" if f.get("latency_ratio") is None else f"{f['latency_ratio']:.3f} ±{f['latency_ratio_iqr'] / 2:.3f}"
        row = [r.label, str(r.config.get("seed")), _fmt(f.get("scope_sparsity"), "pct"), _fmt(f.get(qkey), ""),
               _fmt(f.get("params"), "int"), _fmt(f.get("nonzeros"), "int"), _fmt(f.get("effective_macs"), "M"),
               _fmt(f.get("sparse_bytes"), "MB"), lat, ratio,
               "–" if not r.config.get("stages") else f"{f.get('prune_seconds', 0):.1f} / {f.get('prune_cpu_seconds', 0):.1f} s"]
        if with_gen:
            tps = f.get("tokens_per_s")
            row.append("–" if tps is None else f"{tps:.1f}" + (" (noisy)" if f.get("generation_noisy") else ""))
        if with_mem:
            row.append(_fmt(f.get("memory_added_bytes"), "MB"))
        if with_engine:
            tps = f.get(ENGINE_SPEED)
            row.append("–" if tps is None else f"{tps:.1f} ±{tps * (f.get(ENGINE_SPREAD) or 0) / 2:.1f}")
        rows.append(row)
    return cols, rows


def protocol_lines(group: list[Run]) -> list[tuple[str, str]]:
    """The protocol card of a group as (field, value) pairs."""
    card = group[0].protocol
    out = [("task", card.get("task", "?")), ("model", f"{card.get('model')} ({card.get('model_hash') or 'built here'})")]
    if group[0].task not in QUALITY:
        out += [(k, str(v)) for k, v in card.items()
                if k not in ("task", "model", "model_hash", "machine", "versions", "card_hash", "macs_counter")]
    elif card.get("task") == "lm":
        ev, cal = card.get("evaluation", {}), card.get("calibration", {})
        out += [("evaluation", f"{ev.get('source')}, {ev.get('windows')} × {ev.get('seqlen')} tokens, "
                               f"tokens {ev.get('tokens_hash')}"),
                ("calibration", f"{cal.get('source')}, {cal.get('nsamples')} × {cal.get('seqlen')} tokens "
                                "(per-run seed and token hash in each run)"),
                ("tokenizer", str(card.get("tokenizer_hash")))]
    else:
        data, tr = card.get("data", {}), card.get("training", {})
        out += [("data", f"{data.get('name')}, train {data.get('train_size') or 'all'}, "
                         f"test {data.get('test_examples')}"),
                ("training", ", ".join(f"{k} {v}" for k, v in tr.items() if v is not None))]
    if card.get("macs_counter"):
        inferred = " (a run stored before counters were marked: inferred from its date)" \
            if card.get("macs_counter_inferred") else ""
        out.append(("MAC counter", f"{card['macs_counter']}{inferred}"))
    m, v = card.get("machine", {}), card.get("versions", {})
    out += [("machine", f"{m.get('threads')} thread(s), {m.get('device')}, {m.get('processor')}, {m.get('cores')} cores"),
            ("versions", ", ".join(f"{k} {x}" for k, x in v.items())),
            ("seeds", ", ".join(sorted({str(r.config.get('seed')) for r in group}))),
            ("comparable key", group[0].comparable)]
    return out


def seed_groups(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by protocol with the seed-drawn parts left out (see
    :func:`prunekit.bench.protocol.seedless_key`), in first-seen order."""
    from .protocol import seedless_key

    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(f"{r.task}|{seedless_key(r.protocol)}", []).append(r)
    return list(groups.values())


def _mean_sd(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_table(group: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of a group averaged over seeds: one row per run label, with the quality's
    mean ± standard deviation [min–max] over the seeds that ran it (every numeric figure's mean ± sd for a
    task without one quality figure)."""
    task = group[0].task
    by_label: dict[str, list[Run]] = {}
    for r in group:
        by_label.setdefault(r.label, []).append(r)
    if task not in QUALITY:
        keys = [k for k in _scalar_keys(group)
                if all(isinstance(r.figures.get(k), (int, float, type(None))) for r in group)]
        rows = []
        for label, rs in by_label.items():
            row = [label, ", ".join(str(r.config.get("seed")) for r in rs)]
            for k in keys:
                vals = [float(r.figures[k]) for r in rs if r.figures.get(k) is not None]
                m, sd = _mean_sd(vals) if vals else (None, None)
                row.append("–" if m is None else f"{_fmt(m, '')} ± {_fmt(sd, '')}")
            rows.append(row)
        return ["run", "seeds", *(f"{k} mean ± sd" for k in keys)], rows
    qkey, qname, _ = QUALITY[task]
    cols = ["run", "seeds", f"{qname} mean ± sd", "min – max", "sparsity in scope", "non-zeros", "eff. MACs",
            "latency vs dense (median of seeds)", "prune CPU (mean)"]
    rows = []
    for label, rs in by_label.items():
        q = [r.figures[qkey] for r in rs if r.figures.get(qkey) is not None]
        m, sd = _mean_sd(q) if q else (None, None)
        ratios = sorted(r.figures["latency_ratio"] for r in rs if r.figures.get("latency_ratio") is not None)
        cpu = [r.figures.get("prune_cpu_seconds", 0.0) for r in rs]
        f = rs[0].figures
        rows.append([label, ", ".join(str(r.config.get("seed")) for r in rs),
                     "–" if m is None else (f"{m:.4f} ± {sd:.4f}" if abs(m) < 10 else f"{m:.2f} ± {sd:.2f}"),
                     "–" if not q else f"{_fmt(min(q), '')} – {_fmt(max(q), '')}",
                     _fmt(f.get("scope_sparsity"), "pct"), _fmt(f.get("nonzeros"), "int"),
                     _fmt(f.get("effective_macs"), "M"),
                     "–" if not ratios else f"{ratios[len(ratios) // 2]:.3f}",
                     "–" if not rs[0].config.get("stages") else f"{sum(cpu) / len(cpu):.1f} s"])
    return cols, rows


def mixed_counters_note(runs: Iterable[Run]) -> str:
    """A sentence when ``runs`` hold MACs counted by more than one counter (else empty): such runs are in
    separate tables and plots, never compared."""
    from .store import macs_counters

    counters = macs_counters(runs)
    if len(counters) < 2:
        return ""
    which = ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in sorted(counters.items()))
    return (f"These runs' MACs were counted by different counters: {which}. Their figures differ by what each "
            "counter counts (the legacy hooks count only Linear and Conv layers), so runs of different counters "
            "are in separate tables and never compared; rerun the older ones with --force to compare them.")


def markdown(runs: Iterable[Run], by_seed: bool = True) -> str:
    """Markdown tables, one per comparable group, each with its protocol below it. With ``by_seed``
    (the default), groups whose runs differ only by seed are shown once, averaged over the seeds;
    ``by_seed=False`` gives one table per seed-specific protocol, a row per run."""
    from .papers import TASK as PAPERS, markdown_section

    runs = list(runs)
    papers = markdown_section(runs)
    runs = [r for r in runs if r.task != PAPERS]
    note = mixed_counters_note(runs)
    out = [f"> warning: {note}\n"] if note else []
    if papers:
        out.append("## papers\n\n" + papers)
    if by_seed:
        for group in seed_groups(runs):
            seeds = {r.config.get("seed") for r in group} - {None}  # (a run measured once, with no seed)
            if len(seeds) < 2:
                continue
            cols, rows = seed_table(group)
            out.append(f"### {group[0].recipe}: {group[0].model}, {len(seeds)} seeds\n")
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---|" * len(cols))
            out += ["| " + " | ".join(row) + " |" for row in rows]
            card = [(k, v) for k, v in protocol_lines(group) if k != "comparable key"]
            out.append("\n" + "; ".join(f"{k}: {v}" for k, v in card) + "; per-seed protocols: "
                       + ", ".join(sorted({r.comparable for r in group})) + "\n")
        averaged = {id(r) for g in seed_groups(runs) if len({x.config.get("seed") for x in g} - {None}) > 1 for r in g}
        runs = [r for r in runs if id(r) not in averaged]
    for group in group_runs(runs):
        cols, rows = table_rows(group)
        out.append(f"### {group[0].recipe}: {group[0].model}\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("\n" + "; ".join(f"{k}: {v}" for k, v in protocol_lines(group)) + "\n")
    return "\n".join(out)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (x lower is better: cost; y is the quality)."""
    best = []
    for x, y in points:
        dominated = any((x2 <= x and (y2 >= y if higher_is_better else y2 <= y)) and (x2, y2) != (x, y)
                        for x2, y2 in points)
        if not dominated:
            best.append((x, y))
    return sorted(best)


def engine_pareto_figure(points: list[dict[str, Any]], xlabel: str = "decode tokens/s in llama.cpp",
                         ylabel: str = "perplexity", higher_is_better: bool = False):
    """Quality against measured engine speed, every point labelled: ``points`` are dicts with ``label``,
    ``series`` (one colour each), ``speed`` (x, higher is better), ``spread`` (IQR / median of the speed,
    drawn as ± half of it) and ``quality`` (y). The Pareto front (faster and better) is dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("engine_pareto_figure needs at least one point")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(dict.fromkeys(p["series"] for p in points)):
        mine = [p for p in points if p["series"] == name]
        ax.errorbar([p["speed"] for p in mine], [p["quality"] for p in mine],
                    xerr=[p["speed"] * p.get("spread", 0.0) / 2 for p in mine], fmt="o", ms=5, capsize=2,
                    color=colours[i % len(colours)], label=name)
        for p in mine:
            ax.annotate(p["label"], (p["speed"], p["quality"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = pareto([(-p["speed"], p["quality"]) for p in points], higher_is_better)
    ax.plot([-x for x, _ in front], [y for _, y in front], "k--", lw=0.8, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if not higher_is_better:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def engine_pareto_png(points: list[dict[str, Any]], xlabel: str = "decode tokens/s in llama.cpp",
                      ylabel: str = "perplexity", higher_is_better: bool = False) -> bytes:
    """:func:`engine_pareto_figure` as PNG bytes (for a file beside a benchmark's results)."""
    return base64.b64decode(_png(engine_pareto_figure(points, xlabel, ylabel, higher_is_better)))


def plots(group: list[Run]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the group's plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = group[0].task
    if task not in QUALITY:
        return []  # (their image grids: :func:`grids`)
    qkey, qname, higher = QUALITY[task]
    ok = [r for r in group if r.figures.get(qkey) is not None]
    out = []
    axes = [("scope_sparsity", "sparsity in scope", False), ("effective_macs", "effective MACs", True),
            ("latency_ms", "latency (ms)", True)]
    for xkey, xname, cost in axes:
        pts = [(r.figures[xkey], r.figures[qkey], _series(r)) for r in ok if r.figures.get(xkey) is not None]
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for name in sorted({p[2] for p in pts}):
            mine = sorted((x, y) for x, y, s in pts if s == name)
            ax.plot([p[0] for p in mine], [p[1] for p in mine], "o-", label=name, ms=4)
        sign = 1 if cost else -1  # sparsity is a benefit: Pareto on -sparsity
        front = pareto([(sign * x, y) for x, y, _ in pts], higher)
        ax.plot([sign * x for x, _ in front], [y for _, y in front], "k--", lw=0.8, label="Pareto front")
        ax.set_xlabel(xname)
        ax.set_ylabel(qname)
        if qkey == "perplexity":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((f"{qname} vs {xname}", _png(fig)))
    engine = [r for r in ok if r.figures.get(ENGINE_SPEED) is not None]
    if engine:
        pts = [{"label": r.label, "series": _series(r), "speed": r.figures[ENGINE_SPEED],
                "spread": r.figures.get(ENGINE_SPREAD) or 0.0, "quality": r.figures[qkey]} for r in engine]
        out.append((f"{qname} vs decode tokens/s measured in llama.cpp",
                    _png(engine_pareto_figure(pts, ylabel=qname, higher_is_better=higher))))
    layered = [r for r in ok if r.figures.get("layers") and r.config.get("stages")][:6]
    if layered:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        for r in layered:
            vals = list(r.figures["layers"].values())
            ax.plot(range(len(vals)), vals, ".-", label=r.label[:40], ms=3)
        ax.set_xlabel("layer (model order)")
        ax.set_ylabel("sparsity")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        out.append(("per-layer sparsity", _png(fig)))
    return out


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.card td{text-align:left}
.plots img{max-width:48%;margin:4px}.warn{color:#a40}section{margin-bottom:2.5em}
.grids figure{display:inline-block;margin:4px 8px}.grids img{image-rendering:pixelated;width:300px}
.grids figcaption{font-size:12px}"""


# The mark of a page prunekit wrote (as prunekit.json marks a folder): only such a file is ever replaced.
REPORT_MARK = "<meta name='generator' content='prunekit "


def is_prunekit_report(path: str | Path) -> bool:
    """Whether ``path`` is an HTML report prunekit wrote (its head carries :data:`REPORT_MARK`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return REPORT_MARK.encode() in head


def html_report(runs: Iterable[Run], title: str = "prunekit report") -> str:
    """One self-contained HTML page: per-group tables, protocol cards and embedded plots."""
    from .papers import TASK as PAPERS, html_section

    runs = list(runs)
    papers = html_section(runs)
    n_papers = sum(r.task == PAPERS for r in runs)
    runs = [r for r in runs if r.task != PAPERS]
    groups = group_runs(runs)
    from .. import __version__

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>{REPORT_MARK}{html.escape(__version__)}'>"
             f"<title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} runs in {len(groups)} comparable group(s)"
             + (f"; {n_papers} rows of the papers' benchmarks in the papers group" if n_papers else "") + ".</p>"]
    if papers:
        parts.append(papers)
    seeded = [g for g in seed_groups(runs) if len({r.config.get("seed") for r in g} - {None}) > 1]
    for i, group in enumerate(seeded):
        cols, rows = seed_table(group)
        n = len({r.config.get("seed") for r in group} - {None})
        parts.append(f"<section id='seeds-{i}'><h2>{html.escape(group[0].recipe)}: {html.escape(group[0].model)}, "
                     f"averaged over {n} seeds</h2><p>The runs below differ only by what the seed draws (training "
                     "subset, calibration sample); each seed's own table and plots follow.</p>")
        parts.append("<table class='results seeds'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) +
                     "</tr>" + "".join("<tr class='run'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) +
                                       "</tr>" for row in rows) + "</table></section>")
    note = mixed_counters_note(runs)
    if note:
        parts.append(f"<p class='warn'>{html.escape(note)}</p>")
    by_seed_only = sum(len({r.comparable for r in g}) - 1 for g in seeded)  # extra groups that are only seeds
    if len(groups) > len({(g[0].recipe, g[0].model) for g in groups}) + by_seed_only:
        parts.append("<p class='warn'>Some recipes ran under more than one protocol (not only other seeds); each "
                     "protocol has its own table and plots, and runs of different protocols are not compared.</p>")
    for i, group in enumerate(groups):
        cols, rows = table_rows(group)
        parts.append(f"<section id='group-{i}'><h2>{html.escape(group[0].recipe)}: {html.escape(group[0].model)}</h2>")
        parts.append("<table class='card'><caption>protocol card</caption>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in protocol_lines(group)) + "</table>")
        parts.append("<table class='results'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>" +
                     "".join("<tr class='run'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                             for row in rows) + "</table>")
        figs = plots(group)
        if figs:
            parts.append("<div class='plots'>" + "".join(
                f"<img alt='{html.escape(cap)}' title='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                for cap, b64 in figs) + "</div>")
        samples = grids(group)
        if samples:
            parts.append("<div class='grids'>" + "".join(
                f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, b64 in samples) + "</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
