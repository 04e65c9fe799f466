"""docs/papers.md cannot go stale: one row per abstract, every module it names imports, every function is there,
every command parses, every file it cites exists, and each papers benchmark's verdict (computed from the committed
results files, as the results store and the report compute it) is the one the row states."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "docs" / "papers.md"
ABSTRACTS = [ROOT / "shared" / "papers" / "abstracts.txt", Path("/work/shared/papers/abstracts.txt")]
COLUMNS = ["#", "paper", "module", "functions", "CLI", "claim (from the abstract)", "tested by", "result here"]


def rows() -> list[dict[str, str]]:
    lines = PAPERS.read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| # |"))
    assert [c.strip() for c in lines[head].strip("|").split("|")] == COLUMNS
    out = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"row {cells[0]}: {len(cells)} cells (a '|' inside a cell?)"
        out.append(dict(zip(COLUMNS, cells)))
    return out


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def matches(cell: str, title: str) -> bool:
    """Whether a row's paper cell names ``title``: the cell before any '(' with quotes dropped, each piece between
    '…' found in the title (case-insensitive)."""
    name = cell.split(" (")[0].replace('"', "")
    return all(piece.strip().lower() in title.lower() for piece in name.split("…"))


def test_one_row_per_abstract_in_its_order():
    table = rows()
    assert [r["#"] for r in table] == [str(i) for i in range(1, 61)]
    path = next((p for p in ABSTRACTS if p.is_file()), None)
    if path is None:
        pytest.skip("shared/papers/abstracts.txt is not on this machine")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    titles = lines[5::2]  # (the page's header: 5 lines; then title, abstract, title, ...)
    assert len(titles) == len(table) == 60
    for row, title in zip(table, titles):
        assert matches(row["paper"], title), (row["#"], row["paper"], title)


def test_every_module_and_function_it_names_exists():
    for row in rows():
        modules = [importlib.import_module(m) for m in ticked(row["module"])]
        assert modules or row["module"] == "—", row["#"]
        for name in ticked(row["functions"]):
            found = False
            for module in modules:
                obj = module
                for part in name.split("."):
                    obj = getattr(obj, part, None)
                found = found or obj is not None
            assert found, f"row {row['#']}: {name} is in none of {ticked(row['module'])}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, sub in a.choices.items()}


def test_every_command_it_names_parses():
    from prunekit.cli import build_parser

    for row in rows():
        for command in ticked(row["CLI"]):
            words = shlex.split(command)
            assert words[0] == "prunekit", (row["#"], command)
            parser, path = build_parser(), []
            for word in words[1:]:
                subs = _subcommands(parser)
                if word.startswith("--"):
                    assert word in parser._option_string_actions, f"row {row['#']}: {command}: no option {word}"
                elif word in subs:
                    parser = subs[word]
                    path.append(word)
            assert path and not _subcommands(parser), f"row {row['#']}: {command} names no complete subcommand"


def test_every_file_it_cites_exists():
    for row in rows():
        for name in ticked(row["tested by"]):
            if "/" in name and " " not in name:
                assert (ROOT / name).exists(), f"row {row['#']}: {name} does not exist"


def test_each_papers_benchmark_verdict_is_the_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import papers_store

    table = rows()
    for name, groups in papers_store.FILES.items():
        for files in groups:
            _, results = papers_store.load(name, [papers_store.RESULTS / f for f in files])
            for result in results:
                row = [r for r in table if matches(r["paper"], result.paper)]
                assert len(row) == 1, (result.paper, [r["#"] for r in row])
                assert f"**{result.verdict}**" in row[0]["result here"], \
                    f"row {row[0]['#']} ({result.test or result.paper}): the results say {result.verdict}"
