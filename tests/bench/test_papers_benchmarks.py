"""benchmarks/papers_*.py's rows into the results store without re-running them (benchmarks/papers_store.py), and
into the report's papers group; a results file of another shape is refused with one line, nothing written."""

import json
from pathlib import Path

import pytest

from prunekit.bench.report import html_report
from prunekit.bench.store import Store

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def papers_store(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their sibling _apps_common
    import papers_store

    return papers_store


def _tas_file(path: Path) -> Path:
    # three seeds; TAS beats "uniform" by 2, 3 and 4 points (held: mean 3 > 2 × 1/√3), loses to "magnitude" and ties
    # "uniform+": partly
    acc = {"unpruned": [0.80, 0.81, 0.82], "tas": [0.74, 0.75, 0.76], "uniform": [0.72, 0.72, 0.72],
           "magnitude": [0.78, 0.78, 0.78], "uniform+": [0.74, 0.75, 0.76]}
    lines = [json.dumps({"arm": arm, "seed": s, "acc": a[s], "macs": 1000 if arm == "unpruned" else 400,
                         "config": {"seeds": [s], "train_size": 4000, "epochs": 3.0}})
             for arm, a in acc.items() for s in range(3)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_tas_results_file_goes_into_the_store_and_the_report(tmp_path, papers_store, capsys):
    db = tmp_path / "r.db"
    assert papers_store.main(["--db", str(db), "--only", "tas", "--file", str(_tas_file(tmp_path / "t.jsonl"))]) == 0
    assert "papers_tas: stored 15 rows (1 tested claims) of t.jsonl" in capsys.readouterr().out
    with Store(db) as store:
        runs = store.runs()
    assert len(runs) == 15 and {r.settings["verdict"] for r in runs} == {"partly"}
    assert runs[0].settings["budget"] == {"train_size": 4000, "epochs": 3.0}  # the seed left out: it differs per file
    page = html_report(runs)
    assert "Network Pruning via Transformable Architecture Search" in page and "<b>partly</b>" in page
    assert "tas − uniform+ +0.0 ± 0.0 points (ahead on 0/3 seeds): within noise" in page
    assert "tas − uniform +3.0 ± 1.0 points (ahead on 3/3 seeds): held" in page
    assert "tas − magnitude -3.0 ± 1.0 points (ahead on 0/3 seeds): worse" in page
    # mean ± sd over the seeds, in %: tas 75.0 ± 1.0; its MACs 400 / 1000 of the unpruned network's
    assert "<tr class='run'><td>tas</td><td>75.0 ± 1.0 (3)</td><td>40.0 ± 0.0 (3)</td></tr>" in page


@pytest.mark.parametrize("text, message", [
    ('{"part": "A", "seed": 0, "method": "rd", "allocation": "-", "sparsity": 0.6, "acc_no_ft": 0.7}\n',
     r"t.jsonl:1: 'arm' is None, not one of the kinds papers_tas.py writes \(unpruned, tas, uniform, magnitude, "
     r"uniform\+\); pass a JSON-lines file benchmarks/papers_tas.py wrote \(its --out\); nothing was stored"),
    ('{\n "benchmark": "apps_emo",\n "runs": []\n}\n', r"t.jsonl:1 is not one JSON object per line"),
    ('{"arm": "tas", "seed": 0, "acc": 0.7}\n', r"t.jsonl:1: a 'tas' row of papers_tas.py has macs, this one does not"),
    ('[1, 2]\n', r"t.jsonl:1 is a JSON list, not a row"),
    ('\n', r"t.jsonl: no rows"),
])
def test_a_results_file_of_another_shape_is_one_line_and_nothing_is_written(tmp_path, papers_store, text, message):
    db = tmp_path / "r.db"
    (tmp_path / "t.jsonl").write_text(text)
    with pytest.raises(SystemExit) as exc:
        papers_store.main(["--db", str(db), "--only", "tas", "--file", str(tmp_path / "t.jsonl")])
    assert "\n" not in str(exc.value.code)
    import re

    assert re.search(message, str(exc.value.code)), exc.value.code
    assert not db.exists()


def test_one_bad_file_among_several_stores_nothing(tmp_path, papers_store, monkeypatch):
    db = tmp_path / "r.db"
    good = _tas_file(tmp_path / "papers_tas.jsonl")
    (tmp_path / "papers_regimes.jsonl").write_text(good.read_text())  # TAS rows where the regimes grid should be
    monkeypatch.setattr(papers_store, "RESULTS", tmp_path)
    monkeypatch.setattr(papers_store, "FILES", {"tas": [["papers_tas.jsonl"]], "regimes": [["papers_regimes.jsonl"]]})
    with pytest.raises(SystemExit, match="papers_regimes.jsonl:1: 'kind' is None"):
        papers_store.main(["--db", str(db)])
    assert not db.exists()


def test_the_committed_results_files_all_import(papers_store):
    # every file behind the README's tables reads and gives at least one tested claim with a valid verdict (no store)
    for name, groups in papers_store.FILES.items():
        for files in groups:
            model, results = papers_store.load(name, [papers_store.RESULTS / f for f in files])
            assert model and results, (name, files)


@pytest.mark.parametrize("source, message", [
    ("apps_federated.json", r"holds the results of 'apps_federated', not of apps_emo; pass the JSON file "
                            r"benchmarks/apps_emo.py wrote \(benchmarks/results/apps_emo.json\); nothing was stored"),
    ("papers_tas.jsonl", r"papers_tas.jsonl is not one JSON document \(JSON lines\?\)"),
])
def test_an_apps_file_of_another_benchmark_is_refused(tmp_path, papers_store, source, message):
    db = tmp_path / "r.db"
    with pytest.raises(SystemExit, match=message):
        papers_store.main(["--db", str(db), "--only", "apps_emo", "--file", str(papers_store.RESULTS / source)])
    assert not db.exists()


def test_an_apps_benchmark_goes_into_the_papers_group(tmp_path, papers_store):
    db = tmp_path / "r.db"
    payload = {"benchmark": "apps_emo", "model": "MLP", "settings": {"population": 24}, "runs": [
        {"label": arm, "seed": s, "figures": {"hypervolume": hv[s], "points": [[0.1, 0.2]]}}
        for arm, hv in {"EMO": [0.94, 0.95, 0.96], "global": [0.92, 0.92, 0.93], "uniform": [0.90, 0.90, 0.90]}.items()
        for s in range(3)]}
    (tmp_path / "e.json").write_text(json.dumps(payload))
    assert papers_store.main(["--db", str(db), "--only", "apps_emo", "--file", str(tmp_path / "e.json")]) == 0
    with Store(db) as store:
        runs = store.runs()
    assert len(runs) == 9 and runs[0].recipe == "apps_emo" and "points" not in runs[0].figures  # (scalars only)
    page = html_report(runs)
    # EMO − global: 0.02, 0.03, 0.03 → +0.03 (2 decimals) ± 0.01, held; EMO − uniform: 0.04, 0.05, 0.06, held
    assert "<b>held</b>" in page and "EMO − uniform +0.05 ± 0.01 (ahead on 3/3 seeds): held" in page
    assert "<tr class='run'><td>EMO</td><td>0.9500 ± 0.0100 (3)</td></tr>" in page
