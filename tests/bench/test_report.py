"""The report: Markdown and one self-contained HTML page, checked in headless Chromium."""

import re
import shutil
import subprocess

import pytest

from prunekit.bench.report import group_runs, html_report, markdown, pareto
from prunekit.bench.store import Run


def _runs(comparable="c1"):
    out = []
    for i, (method, s, acc) in enumerate([("dense", 0.0, 0.96), ("magnitude", 0.5, 0.95), ("magnitude", 0.9, 0.90),
                                           ("random", 0.5, 0.90), ("random", 0.9, 0.60)]):
        stages = [] if method == "dense" else [{"stage": "prune", "method": method, "sparsity": s}]
        label = "dense" if method == "dense" else f"prune({method}, {s})"
        figures = {"accuracy": acc, "scope_sparsity": s, "params": 1000, "nonzeros": int(1000 * (1 - s)),
                   "effective_macs": 1e6 * (1 - s), "sparse_bytes": 4000 * (1 - s), "latency_ms": 2.0 - s,
                   "latency_iqr_ms": 0.1, "latency_why": "", "prune_seconds": 0.1, "prune_cpu_seconds": 0.1,
                   "layers": {"a": s, "b": s * 0.9}}
        if stages:
            figures.update(latency_ratio=1 - s / 2, latency_ratio_iqr=0.02)
        out.append(Run(f"k{i}{comparable}", "demo", label, "classify", "mlp", {"stages": stages, "seed": 0}, {},
                       {"task": "classify", "model": "mlp", "data": {"name": "digits"}, "machine": {"threads": 1},
                        "versions": {"torch": "x"}}, comparable, figures))
    return out


def test_markdown_has_a_row_per_run_and_the_protocol():
    text = markdown(_runs())
    assert text.count("| prune(") == 4 and "| dense |" in text and "comparable key: c1" in text


def test_different_protocols_are_kept_apart():
    runs = _runs("c1") + _runs("c2")
    assert len(group_runs(runs)) == 2
    page = html_report(runs)
    assert page.count("<table class='results'>") == 2 and "not compared" in page


def test_pareto_front():
    assert pareto([(1, 0.5), (2, 0.9), (3, 0.8), (1, 0.4)], higher_is_better=True) == [(1, 0.5), (2, 0.9)]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _render(path):
    proc = subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_chromium_without_console_errors(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(html_report(_runs()))
    dom, console = _render(page)
    assert console == []
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == 4  # 3 Pareto plots + per-layer
    assert len(re.findall(r"<tr class=\"run\">", dom)) == 5
    assert "protocol card" in dom and "http" not in page.read_text().replace("http-equiv", "")  # nothing fetched
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFn()</script></body></html>")
    assert _render(broken)[1], "the console check must see a page's errors"


def _seeded(seed, accs):
    runs = _runs(f"s{seed}")
    for r, acc in zip(runs, accs):
        r.config["seed"] = seed
        r.protocol = {**r.protocol, "data": {"name": "digits", "seed": seed, "train_indices_hash": f"h{seed}"}}
        r.figures["accuracy"] = acc
    return runs


def test_markdown_averages_runs_that_differ_only_by_seed():
    runs = _seeded(0, [0.96, 0.95, 0.90, 0.90, 0.60]) + _seeded(1, [0.94, 0.93, 0.88, 0.86, 0.50])
    text = markdown(runs)
    assert "2 seeds" in text and text.count("| prune(") == 4  # one row per run label, not per seed
    assert "| prune(random, 0.9) | 0, 1 | 0.5500 ± 0.0707 | 0.5000 – 0.6000 |" in text
    assert "per-seed protocols: s0, s1" in text
    per_seed = markdown(runs, by_seed=False)
    assert per_seed.count("| prune(") == 8  # every run, a table per seed


def test_a_different_evaluation_is_never_averaged_with_the_rest():
    other = _seeded(1, [0.5] * 5)
    for r in other:
        r.protocol["data"]["name"] = "other"
    text = markdown(_seeded(0, [0.9] * 5) + other)
    assert "seeds" not in text.split("\n")[0] and text.count("### ") == 2


def test_the_page_shows_runs_averaged_over_seeds_first():
    runs = _seeded(0, [0.96, 0.95, 0.90, 0.90, 0.60]) + _seeded(1, [0.94, 0.93, 0.88, 0.86, 0.50])
    page = html_report(runs)
    assert "averaged over 2 seeds" in page and page.count("<table class='results seeds'>") == 1
    assert page.count("<table class='results'>") == 2  # and each seed's own table
    assert "not only other seeds" not in page  # seeds alone are not "another protocol"


def _engine_runs():
    """An lm group where every run carries its llama.cpp decode speed: dense, a faster shrunk model, and masks that
    buy no speed (what the engine Pareto plot is for)."""
    out = []
    for i, (label, stages, ppl, tps) in enumerate([
            ("dense f16", [{"stage": "export", "quant": "f16"}], 11.0, 40.0),
            ("shrunk f16", [{"stage": "shrink", "target": "params=0.6"}, {"stage": "export", "quant": "f16"}], 14.0, 62.0),
            ("wanda50 f16", [{"stage": "prune", "method": "wanda", "sparsity": 0.5}, {"stage": "export", "quant": "f16"}],
             16.0, 39.0)]):
        figures = {"perplexity": ppl, "params": 100, "llama_cpp_decode_tokens_per_s": tps, "llama_cpp_decode_spread": 0.1}
        out.append(Run(f"e{i}", "engine", label, "lm", "smollm2-135m", {"stages": stages, "seed": 0}, {},
                       {"task": "lm", "model": "smollm2-135m", "machine": {"threads": 1}, "versions": {}}, "e", figures))
    return out


def test_runs_with_llama_cpp_speed_get_the_engine_pareto_plot_and_a_column():
    from prunekit.bench.report import plots, table_rows

    runs = _engine_runs()
    caps = [c for c, _ in plots(runs)]
    assert caps == ["perplexity vs decode tokens/s measured in llama.cpp"]
    cols, rows = table_rows(runs)
    assert cols[-1] == "llama.cpp decode tok/s" and rows[1][-1] == "62.0 ±3.1"
    assert "perplexity vs decode tokens/s measured in llama.cpp" in html_report(runs)
    assert not any("llama.cpp" in c for c, _ in plots(_runs()))  # runs without it: no such plot


def test_the_engine_pareto_front_is_faster_and_better():
    from prunekit.bench.report import engine_pareto_figure, engine_pareto_png

    points = [{"label": r.label, "series": r.label.split()[0], "speed": r.figures["llama_cpp_decode_tokens_per_s"],
               "spread": 0.1, "quality": r.figures["perplexity"]} for r in _engine_runs()]
    fig = engine_pareto_figure(points)
    front = [line for line in fig.axes[0].get_lines() if line.get_label() == "Pareto front"][0]
    assert sorted(front.get_xdata()) == [40.0, 62.0]  # wanda50 is slower and worse than dense: off the front
    assert engine_pareto_png(points)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one point"):
        engine_pareto_figure([])
