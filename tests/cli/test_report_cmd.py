"""``prunekit report --out``: never an input, never a file prunekit did not write, an existing report only
with ``--overwrite``."""

import pytest

from prunekit.bench.store import Run, Store
from prunekit.cli import main


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as s:
        for key, sparsity in (("a", 0.5), ("b", 0.8)):
            s.put(Run(key, "r", f"prune(magnitude, {sparsity})", "lm", "m",
                      {"stages": [{"stage": "prune", "method": "magnitude", "sparsity": sparsity}], "seed": 0},
                      {}, {"task": "lm"}, "c1", {"perplexity": 12.5}))
    return path


def _report(db, out, *extra):
    return main(["report", "--db", str(db), "--out", str(out), "--quiet", *extra])


def test_out_equal_to_the_store_is_refused_and_the_store_kept(db, capsys):
    before = db.read_bytes()
    for extra in ((), ("--overwrite",)):
        assert _report(db, db, *extra) == 2
        assert "is the input --db" in capsys.readouterr().err
    assert db.read_bytes() == before
    with Store(db) as s:
        assert len(s.runs()) == 2


@pytest.mark.parametrize("name", ["report.html", "notes.txt"])
def test_a_file_prunekit_did_not_write_is_never_replaced(db, tmp_path, capsys, name):
    mine = tmp_path / name
    mine.write_text("<html>my own page</html>")
    for extra in ((), ("--overwrite",)):
        assert _report(db, mine, *extra) == 2
        assert "is not a report prunekit wrote" in capsys.readouterr().err
    assert mine.read_text() == "<html>my own page</html>"


def test_a_report_prunekit_wrote_is_replaced_only_with_overwrite(db, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert _report(db, page) == 0
    assert page.read_text().count("<tr class='run'>") == 2 and "content='prunekit " in page.read_text()
    assert _report(db, page) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    page.write_text(page.read_text().replace("<h1>", "<h1>old "))
    assert _report(db, page, "--overwrite") == 0
    assert "<h1>old " not in page.read_text()
