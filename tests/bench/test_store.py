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
