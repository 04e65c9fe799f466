"""The papers' tested claims: the one verdict rule, the store's rows and the report's "papers" group."""

import pytest

from prunekit.bench.papers import (Measured, PaperResult, combine, compare, markdown_section, paired,
                                   paired_verdict, store_paper_results)
from prunekit.bench.report import html_report, markdown
from prunekit.bench.store import Store


def _rows():
    # arm "new" vs "old" at two settings over seeds 0-2. The paired differences are float64 subtractions of numbers
    # below 1 (error ~1e-16), so 1e-9 is a safe tolerance for them; the report rounds to 0.1 point.
    acc = {("new", "50%"): [0.70, 0.72, 0.74], ("old", "50%"): [0.68, 0.69, 0.70],
           ("new", "80%"): [0.50, 0.40, 0.60], ("old", "80%"): [0.49, 0.42, 0.56]}
    return [Measured(arm, setting, seed, {"acc": a}) for (arm, setting), accs in acc.items()
            for seed, a in enumerate(accs)]


def test_paired_differences_and_the_verdict_by_hand():
    rows = _rows()
    assert paired(rows, "acc", "new", "old", "50%") == pytest.approx([0.02, 0.03, 0.04], abs=1e-9)
    # 50 %: mean 0.03, sd 0.01, standard error 0.01/√3 = 0.00577; 0.03 > 2 × 0.00577: held
    assert paired_verdict([0.02, 0.03, 0.04]) == "held"
    # 80 %: differences 0.01, -0.02, 0.04: mean 0.01, sd 0.03, 2 × SE = 0.0346 > 0.01: not held (within noise)
    assert paired_verdict([0.01, -0.02, 0.04]) == "not held"
    assert paired_verdict([0.05]) == "not tested"  # one seed: no spread to judge by
    # a margin: "loses less than 1 point" is held for differences around -0.002 with a tiny spread
    assert paired_verdict([-0.002, -0.003, -0.001], margin=-0.01) == "held"
    assert paired_verdict([-0.002, -0.003, -0.001]) == "not held"


def test_compare_combines_settings_and_says_why():
    verdict, why = compare(_rows(), "acc", "new", ["old"])
    assert verdict == "partly"
    assert "50%: new − old +3.0 ± 1.0 points (ahead on 3/3 seeds): held" in why
    assert "80%: new − old +1.0 ± 3.0 points (ahead on 2/3 seeds): within noise" in why
    assert compare(_rows(), "acc", "new", ["old"], ["50%"])[0] == "held"
    # baselines given as a generator are read once for every setting (both settings judged: partly, not held)
    assert compare(_rows(), "acc", "new", (b for b in ["old"]))[0] == "partly"
    assert combine(["held", "held"]) == "held" and combine(["not held", "not tested"]) == "not held"
    assert combine(["not tested"]) == "not tested"
    with pytest.raises(ValueError, match="no seed has both 'new' and any of \\['missing'\\]"):
        compare(_rows(), "acc", "new", ["missing"])


def _result(**kw):
    verdict, why = compare(_rows(), "acc", "new", ["old"])
    fields = dict(paper="A Paper About Pruning", claim="new beats old", verdict=verdict, why=why, metrics=("acc",),
                  rows=_rows(), budget={"epochs": 3, "train_size": 1000}, percent=("acc",))
    return PaperResult(**{**fields, **kw})


def test_a_result_goes_into_the_store_and_the_report_shows_its_table(tmp_path):
    db = tmp_path / "r.db"
    assert store_paper_results(db, "papers_fake", "SmallCNN", [_result()], source="fake.jsonl") == 12
    with Store(db) as store:
        runs = store.runs()
    assert {r.task for r in runs} == {"papers"} and len(runs) == 12
    assert runs[0].settings["verdict"] == "partly" and runs[0].settings["seeds"] == [0, 1, 2]
    assert runs[0].settings["budget"] == {"epochs": 3, "train_size": 1000}
    page = html_report(runs)
    assert "<section id='papers'>" in page and "A Paper About Pruning" in page and "new beats old" in page
    assert "<b>partly</b>" in page and "fake.jsonl" in page and "epochs 3, train_size 1000" in page
    # the table: mean ± sd over the three seeds, in %: new 50 % → 72.0 ± 2.0, old 80 % → (49+42+56)/3 = 49.0 ± 7.0
    assert "<tr><th>arm</th><th>50%</th><th>80%</th></tr>" in page
    assert "<tr class='run'><td>new</td><td>72.0 ± 2.0 (3)</td><td>50.0 ± 10.0 (3)</td></tr>" in page
    assert "<tr class='run'><td>old</td><td>69.0 ± 1.0 (3)</td><td>49.0 ± 7.0 (3)</td></tr>" in page
    assert "0 comparable group(s); 12 rows of the papers' benchmarks" in page  # kept out of the generic tables
    text = markdown(runs)
    assert "## papers" in text and "| new | 72.0 ± 2.0 (3) | 50.0 ± 10.0 (3) |" in text and "**partly**" in text


def test_storing_again_replaces_the_rows(tmp_path):
    db = tmp_path / "r.db"
    store_paper_results(db, "papers_fake", "SmallCNN", [_result()])
    store_paper_results(db, "papers_fake", "SmallCNN", [_result()])
    with Store(db) as store:
        assert len(store.runs()) == 12


@pytest.mark.parametrize("bad, message", [
    (dict(verdict="maybe"), "verdict 'maybe' is not one of held, not held, partly, not tested"),
    (dict(rows=[]), "no measured rows"),
    (dict(metrics=("loss",)), "no row holds its metric 'loss'"),
    (dict(rows=[Measured("new", "", 0, {"acc": [0.1, 0.2]})]), "figures must be scalars"),
    (dict(claim=""), "needs the paper's title and its claim"),
])
def test_bad_results_are_refused_before_the_store_is_created(tmp_path, bad, message):
    db = tmp_path / "r.db"
    with pytest.raises(ValueError, match=message):
        store_paper_results(db, "papers_fake", "SmallCNN", [_result(), _result(**bad)])
    assert not db.exists()


def test_markdown_section_empty_without_papers_runs():
    assert markdown_section([]) == ""
