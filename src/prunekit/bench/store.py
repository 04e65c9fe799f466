"""The results store: one SQLite file, one row per run, written in one transaction.

A row holds the run's key (a hash of its config and protocol card), the recipe, the full config, every
measurement, the protocol card and its comparable key, the status and the times. The database runs
in WAL mode, so several runs can write one file at once; a killed run leaves no half row (its row is
inserted whole at the end, or not at all). A file that is not a prunekit store, or one written by a
newer schema, is refused and never overwritten.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA = 1
KIND = "prunekit-results"
DEFAULT_DB = "prunekit-results.db"

# Runs stored before the runner marked its MAC counter (protocol["macs_counter"]) are marked when read: those
# stored before metrics/macs.py landed (2026-12-05 07:50:24 UTC) were counted by core/stats' module hooks, Linear
# and Conv layers only (attention's products missing); those stored later by metrics/macs.py's first version.
LEGACY_MACS_COUNTER = "module-hooks/linear-conv"
MACS_COUNTER_SINCE = 1796457024.0

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    recipe TEXT NOT NULL,
    label TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    settings TEXT NOT NULL,
    protocol TEXT NOT NULL,
    comparable TEXT NOT NULL,
    figures TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    started REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_recipe ON runs (recipe);
"""


class StoreError(ValueError):
    """The file is not a prunekit results store, or is from a newer schema."""


@dataclass
class Run:
    """One run's record: what ran (config), how it was measured (protocol card), what it gave."""

    key: str
    recipe: str
    label: str
    task: str
    model: str
    config: dict[str, Any]
    settings: dict[str, Any]
    protocol: dict[str, Any]
    comparable: str
    figures: dict[str, Any]
    status: str = "ok"
    error: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def flat(self) -> dict[str, Any]:
        """Every field as ``key`` → value (for ``--where`` queries and tables): the run's own fields, each
        stage's settings (also as ``<stage>.<field>``), the seed, and every scalar figure (also as
        ``figures.<name>``; a stage setting such as ``sparsity`` wins over a figure of the same name)."""
        out: dict[str, Any] = {"key": self.key, "recipe": self.recipe, "label": self.label, "task": self.task,
                               "model": self.model, "status": self.status, "comparable": self.comparable}
        for stage in self.config.get("stages", []):
            kind = stage.get("stage", "stage")
            for k, v in stage.items():
                if k != "stage" and not isinstance(v, (dict, list)):
                    out.setdefault(k, v)
                    out[f"{kind}.{k}"] = v
        out["seed"] = self.config.get("seed")
        for k, v in self.figures.items():
            if not isinstance(v, (dict, list)):
                out.setdefault(k, v)
                out[f"figures.{k}"] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "recipe": self.recipe, "label": self.label, "task": self.task, "model": self.model,
                "config": self.config, "settings": self.settings, "protocol": self.protocol,
                "comparable": self.comparable, "figures": self.figures, "status": self.status, "error": self.error,
                "started": self.started, "seconds": self.seconds}


class Store:
    """A prunekit results database (SQLite). Opening a missing file creates it."""

    def __init__(self, path: str | Path = DEFAULT_DB) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; --db takes a file such as {DEFAULT_DB}")
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise StoreError(f"{self.path} is not a prunekit results store (not an SQLite file); "
                                     "pass another --db (it was left untouched)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 30000")
        try:
            self._check_or_create()
        except BaseException:
            self.db.close()
            raise

    def _check_or_create(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is an SQLite database but not a prunekit results store "
                             f"(tables: {', '.join(sorted(tables))}); pass another --db (it was left untouched)")
        if "meta" in tables:
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(meta)")}
            if not {"key", "value"} <= columns or "runs" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a prunekit results store (its 'meta' table "
                                 f"has columns {', '.join(sorted(columns))}; tables: {', '.join(sorted(tables))}); "
                                 "pass another --db (it was left untouched)")
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if meta.get("kind") != KIND:
                raise StoreError(f"{self.path} is not a prunekit results store (kind {meta.get('kind')!r})")
            schema = int(meta.get("schema", 0))
            if schema > SCHEMA:
                raise StoreError(f"{self.path} was written by a newer prunekit (store schema {schema}, this one reads "
                                 f"{SCHEMA}); upgrade prunekit to read it (the file was left untouched)")
            return
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _TABLES.split(";")):
                self.db.execute(statement)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?), ('schema', ?)", (KIND, str(SCHEMA)))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, key: str) -> bool:
        """Whether a successful run with this key is stored."""
        row = self.db.execute("SELECT 1 FROM runs WHERE key = ? AND status = 'ok'", (key,)).fetchone()
        return row is not None

    def get(self, key: str) -> Run | None:
        """The run stored under ``key``."""
        rows = self._select("WHERE key = ?", (key,))
        return rows[0] if rows else None

    def put(self, run: Run) -> None:
        """Insert (or replace) a run in one transaction."""
        values = (run.key, run.recipe, run.label, run.task, run.model, json.dumps(run.config, default=str),
                  json.dumps(run.settings, default=str), json.dumps(run.protocol, default=str), run.comparable,
                  json.dumps(run.figures, default=str), run.status, run.error, run.started, run.seconds)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _select(self, where: str = "", args: Iterable[Any] = ()) -> list[Run]:
        cols = "key, recipe, label, task, model, config, settings, protocol, comparable, figures, status, error, started, seconds"
        out = []
        for r in self.db.execute(f"SELECT {cols} FROM runs {where} ORDER BY started", tuple(args)):
            out.append(mark_macs_counter(Run(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]),
                                             json.loads(r[7]), r[8], json.loads(r[9]), r[10], r[11], r[12], r[13])))
        return out

    def runs(self, where: dict[str, str] | None = None, *, recipe: str | None = None,
             include_failed: bool = False) -> list[Run]:
        """The stored runs, optionally of one recipe, filtered by ``where`` (``field → value`` on
        :meth:`Run.flat`, compared as text; ``a|b`` matches either)."""
        rows = self._select("WHERE recipe = ?", (recipe,)) if recipe else self._select()
        if not include_failed:
            rows = [r for r in rows if r.status == "ok"]
        known = sorted({k for r in rows for k in r.flat()})
        for k in where or {}:
            if rows and k not in known:  # a misspelt field would match nothing, silently
                import difflib

                close = difflib.get_close_matches(k, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"no stored run has a field {k!r}{hint}; known fields: {', '.join(known)}")
        for k, v in (where or {}).items():
            wanted = set(str(v).split("|"))
            rows = [r for r in rows if str(r.flat().get(k)) in wanted]
        return rows


def mark_macs_counter(run: Run) -> Run:
    """Mark a run that holds MACs but not the counter that counted them (stored before the runner marked it):
    by the date it started, the legacy Linear/Conv hooks or metrics/macs.py's first version, with
    ``macs_counter_inferred`` set; its comparable key then includes the counter, as a new run's does."""
    from ..metrics.macs import COUNTER
    from .protocol import comparable_key

    if "macs" not in run.figures or run.protocol.get("macs_counter") is not None or run.status != "ok":
        return run
    counter = LEGACY_MACS_COUNTER if run.started < MACS_COUNTER_SINCE else COUNTER
    run.protocol = {**run.protocol, "macs_counter": counter, "macs_counter_inferred": True}
    run.comparable = comparable_key(run.protocol)
    return run


def macs_counters(runs: Iterable[Run]) -> dict[str, int]:
    """How many of ``runs`` each MAC counter counted (runs without MACs left out)."""
    out: dict[str, int] = {}
    for r in runs:
        counter = r.protocol.get("macs_counter")
        if counter is not None:
            out[counter] = out.get(counter, 0) + 1
    return out


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``["method=wanda", "sparsity=0.5"]`` → ``{"method": "wanda", "sparsity": "0.5"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where takes field=value (e.g. method=wanda), got {item!r}")
        out[key.strip()] = value.strip()
    return out
