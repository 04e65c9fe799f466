"""The benchmark harness: run recipes, keep every run in a results store, report them.
Knows everything; known by nothing."""

from .runner import STAGE_RUNNERS, execute, run, run_key
from .store import DEFAULT_DB, Run, Store, StoreError

__all__ = ["DEFAULT_DB", "STAGE_RUNNERS", "Run", "Store", "StoreError", "execute", "run", "run_key"]
