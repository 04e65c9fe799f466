"""The benchmark harness: run recipes, keep every run in a results store, report them.
Knows everything; known by nothing."""

from .runner import execute, run, run_key, workspace
from .store import DEFAULT_DB, Run, Store, StoreError

__all__ = ["DEFAULT_DB", "Run", "Store", "StoreError", "execute", "run", "run_key", "workspace"]
