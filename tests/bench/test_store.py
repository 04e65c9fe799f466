"""The results store: transactional rows, WAL, refusal of foreign or newer files, queries."""

import sqlite3
import subprocess
import sys

import pytest

from prunekit.bench.store import Run, Store, StoreError, parse_where


def _run(key, method="wanda", sparsity=0.5, status="ok"):
    return Run(key, "r", f"prune({method}, {sparsity})", "lm", "m",
               {"stages": [{"stage": "prune", "method": method, "sparsity": sparsity}], "seed": 0},
               {}, {"task": "lm"}, "c1", {"perplexity": 12.5}, status)


def test_put_get_query(tmp_path):
    db = tmp_path / "r.db"
    with Store(db) as s:
        s.put(_run("a"))
        s.put(_run("b", "sparsegpt", 0.6))
        s.put(_run("c", status="failed"))
        assert s.has("a") and not s.has("c") and not s.has("zz")
        assert s.get("b").figures == {"perplexity": 12.5}
        assert [r.key for r in s.runs({"method": "wanda"})] == ["a"]
        assert [r.key for r in s.runs({"method": "wanda|sparsegpt"})] == ["a", "b"]
        assert [r.key for r in s.runs({"prune.sparsity": "0.6"})] == ["b"]
        assert len(s.runs(include_failed=True)) == 3
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_foreign_file_is_refused_and_left_untouched(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("my notes")
    with pytest.raises(StoreError, match="not an SQLite file"):
        Store(text)
    assert text.read_text() == "my notes"
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a prunekit results store .tables: mine"):
        Store(other)


@pytest.mark.parametrize("tables", ["CREATE TABLE meta (name TEXT, data TEXT)",
                                    "CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('kind', 'x')"])
def test_another_applications_meta_table_is_not_a_prunekit_store(tmp_path, capsys, tables):
    from prunekit.cli import main

    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.executescript(tables)
    con.close()
    before = other.read_bytes()
    with pytest.raises(StoreError, match="not a prunekit results store"):
        Store(other)
    assert main(["results", "--db", str(other)]) == 2
    assert "not a prunekit results store" in capsys.readouterr().err
    assert other.read_bytes() == before


def test_an_unknown_where_field_is_an_error_naming_the_known_ones(tmp_path):
    with Store(tmp_path / "r.db") as s:
        assert s.runs({"methd": "wanda"}) == []  # an empty store: nothing to name
        s.put(_run("a"))
        with pytest.raises(ValueError, match=r"no stored run has a field 'methd' \(did you mean 'method'\?\); "
                                             r"known fields: .*\bmethod\b.*\bsparsity\b"):
            s.runs({"methd": "wanda"})
        assert [r.key for r in s.runs({"figures.perplexity": "12.5"})] == ["a"]


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "r.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer prunekit .store schema 99"):
        Store(db)


def test_concurrent_writers_do_not_corrupt(tmp_path):
    db = tmp_path / "r.db"
    Store(db).close()
    code = (
        "import sys; from prunekit.bench.store import Run, Store\n"
        "s = Store(sys.argv[1])\n"
        "for i in range(40):\n"
        "    s.put(Run(f'{sys.argv[2]}-{i}', 'r', 'l', 'lm', 'm', {}, {}, {}, 'c', {'i': i}))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), str(w)]) for w in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    with Store(db) as s:
        assert len(s.runs()) == 120
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_killed_writer_leaves_no_half_row(tmp_path):
    db = tmp_path / "r.db"
    code = (
        "import os, sys, signal; from prunekit.bench.store import Run, Store\n"
        "s = Store(sys.argv[1]); s.put(Run('whole', 'r', 'l', 'lm', 'm', {}, {}, {}, 'c', {}))\n"
        "s.db.execute('BEGIN IMMEDIATE')\n"
        "s.db.execute(\"INSERT INTO runs VALUES ('half','r','l','lm','m','{}','{}','{}','c','{}','ok',NULL,0,0)\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)])
    with Store(db) as s:
        assert [r.key for r in s.runs()] == ["whole"]


def test_parse_where():
    assert parse_where(["method=wanda", "sparsity = 0.5"]) == {"method": "wanda", "sparsity": "0.5"}
    with pytest.raises(ValueError, match="field=value"):
        parse_where(["wanda"])


def _macs_run(key, started, protocol_extra=None, macs=True):
    figures = {"accuracy": 0.9, "effective_macs": 5e5, "macs": 1e6} if macs else {"accuracy": 0.9}
    protocol = {"task": "classify", "model": "mlp", "versions": {"torch": "x"}, **(protocol_extra or {})}
    from prunekit.bench.protocol import comparable_key

    return Run(key, "r", "prune(magnitude, 0.5)", "classify", "mlp", {"stages": [], "seed": 0}, {}, protocol,
               comparable_key(protocol), figures, started=started)


def test_runs_stored_before_the_counter_was_marked_are_marked_and_never_compared_with_newer_ones(tmp_path):
    from prunekit.bench.report import group_runs, html_report, markdown
    from prunekit.bench.store import LEGACY_MACS_COUNTER, MACS_COUNTER_SINCE
    from prunekit.metrics.macs import COUNTER

    with Store(tmp_path / "r.db") as s:
        s.put(_macs_run("old", MACS_COUNTER_SINCE - 3600))  # before metrics/macs.py: Linear/Conv hooks
        s.put(_macs_run("between", MACS_COUNTER_SINCE + 3600))  # after it, before runs were marked
        s.put(_macs_run("new", MACS_COUNTER_SINCE + 7200, {"macs_counter": COUNTER}))  # as the runner stores now
        s.put(_macs_run("no-macs", MACS_COUNTER_SINCE - 3600, macs=False))
        runs = {r.key: r for r in s.runs()}
    assert runs["old"].protocol["macs_counter"] == LEGACY_MACS_COUNTER and runs["old"].protocol["macs_counter_inferred"]
    assert runs["between"].protocol["macs_counter"] == COUNTER and runs["between"].protocol["macs_counter_inferred"]
    assert "macs_counter_inferred" not in runs["new"].protocol and "macs_counter" not in runs["no-macs"].protocol
    # the one counted by the hooks is apart; the same counter, inferred or stored, compares; a run without MACs
    # keeps the key it always had
    assert runs["between"].comparable == runs["new"].comparable != runs["old"].comparable
    assert runs["no-macs"].comparable == _macs_run("x", 0, macs=False).comparable
    groups = group_runs([runs["old"], runs["between"], runs["new"]])
    assert sorted(len(g) for g in groups) == [1, 2]
    text = markdown(list(runs.values()))
    assert text.startswith("> warning: These runs' MACs were counted by different counters: ")
    assert f"{LEGACY_MACS_COUNTER} (1 run)" in text and f"{COUNTER} (2 runs)" in text
    assert "MAC counter: module-hooks/linear-conv (a run stored before counters were marked" in text
    assert "counted by different counters" in html_report(list(runs.values()))
    assert "different counters" not in markdown([runs["between"], runs["new"]])


def test_the_runner_marks_the_counter_of_every_run_that_measures_macs(tmp_path):
    import prunekit as pk
    from prunekit.metrics.macs import COUNTER
    from prunekit.recipe import Recipe

    recipe = Recipe.from_yaml("""name: m
task: {task: classify, model: mlp, data: digits, train_size: 200, epochs: 0.2, batch_size: 50, test_size: 50}
stages: [{stage: prune, method: magnitude, sparsity: 0.5}]
measure: [accuracy, macs]
""")
    runs = pk.bench.run(recipe, db=str(tmp_path / "r.db"), progress=False, say=lambda t: None)
    assert [r.protocol["macs_counter"] for r in runs] == [COUNTER, COUNTER]
    assert all("macs_counter_inferred" not in r.protocol for r in runs)
