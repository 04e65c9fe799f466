"""Where the per-shard and per-partition work runs: this process, or Ray.

Both engines run the *same* functions on the *same* units (one input shard, one partition of
clusters), so their results are identical; only the scheduling differs, and on Ray it is Ray's own:
Ray Data (``from_items(...).map`` / ``map_batches`` with an actor pool) for the per-shard passes
(reading, embedding, assigning clusters), ``ray.remote`` tasks for the per-partition passes (dedup,
density). A task's expected failures (bad data: ``ValueError``, ``FileNotFoundError``) come back as
the same exception with the same message; anything else surfaces as Ray reports it.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

ENGINES = ("local", "ray")
_EXPECTED = (ValueError, FileNotFoundError)


def _guarded(fn: Callable[..., Any], item: Any, *extra: Any) -> dict[str, Any]:
    """Run ``fn(item, *extra)``; an expected error becomes data, so it crosses process borders intact."""
    try:
        return {"ok": fn(item, *extra)}
    except _EXPECTED as exc:
        return {"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()}


def _unwrap(result: dict[str, Any]) -> Any:
    if "error" in result:
        cls = FileNotFoundError if result["error"] == "FileNotFoundError" else ValueError
        raise cls(result["message"])
    return result["ok"]


class LocalEngine:
    """Runs every unit in this process, one after the other."""

    name = "local"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(self, fn: Callable[..., Any], items: Sequence[Any], desc: str = "", extra: tuple = (),
            tasks: bool = False) -> list[Any]:
        """``[fn(item, *extra) for item in items]`` with a progress bar (``tasks`` matters only on Ray)."""
        return [fn(item, *extra) for item in tqdm(items, desc=desc, disable=not self.progress, leave=False)]

    def map_actors(self, actor: type, items: Sequence[Any], desc: str = "", init: tuple = ()) -> list[Any]:
        """One ``actor(*init)`` applied to every item."""
        one = actor(*init)
        return [one(item) for item in tqdm(items, desc=desc, disable=not self.progress, leave=False)]

    def close(self) -> None:
        """Nothing to release."""


def _rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Ray Data rows for ``items``: the position and the pickled item (bytes keep the column Arrow-native)."""
    import cloudpickle

    return [{"i": i, "item": cloudpickle.dumps(it)} for i, it in enumerate(items)]


def _results(rows: list[dict[str, Any]]) -> list[Any]:
    return [_unwrap(pickle.loads(r["result"])) for r in sorted(rows, key=lambda r: r["i"])]


class _RowFn:
    """Ray Data row function: ``{"i", "item"}`` → ``{"i", "result"}`` through :func:`_guarded`."""

    def __init__(self, fn: Callable[..., Any], extra: tuple) -> None:
        self.fn, self.extra = fn, extra

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = _guarded(self.fn, pickle.loads(row["item"]), *self.extra)
        return {"i": row["i"], "result": pickle.dumps(result)}


class _ActorRow:
    """Ray Data actor that builds ``actor(*init)`` once and applies it to each row's item."""

    def __init__(self, actor: type, init: tuple) -> None:
        try:
            self.one: Any = actor(*init)
            self.failure: dict[str, Any] | None = None
        except _EXPECTED as exc:
            self.one, self.failure = None, {"error": type(exc).__name__, "message": str(exc)}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self.failure if self.failure is not None else _guarded(self.one, pickle.loads(row["item"]))
        return {"i": row["i"], "result": pickle.dumps(result)}


class RayEngine:
    """Runs the units on Ray: a running cluster (``address``, e.g. ``"auto"`` or ``"ray://host:10001"``)
    or a local Ray started here with ``workers`` CPUs (default: all). A Ray this engine started is
    shut down by :meth:`close`; one the caller started is left running."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, progress: bool = True) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is in the web extra
            raise ValueError("engine='ray' needs Ray: pip install 'prunekit[web]' (ray[data])") from exc
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.progress = progress
        self.started = False
        if not ray.is_initialized():
            connect(address, workers)
            self.started = True
        elif address is not None:
            import warnings

            warnings.warn(f"Ray is already initialized in this process; using it (address {address!r} is ignored)",
                          stacklevel=3)
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        from ray.data import DataContext

        import logging

        DataContext.get_current().enable_progress_bars = progress
        if not progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], desc: str = "", extra: tuple = (),
            tasks: bool = False) -> list[Any]:
        """``fn(item, *extra)`` for every item: Ray Data, one block per item (``tasks=True``: one
        ``ray.remote`` task per item); results in the order of ``items``."""
        if not items:
            return []
        if tasks:
            return self._tasks(fn, items, desc, extra)
        import ray.data

        ds = ray.data.from_items(_rows(items), override_num_blocks=len(items))
        return _results(ds.map(_RowFn(fn, extra)).take_all())

    def map_actors(self, actor: type, items: Sequence[Any], desc: str = "", init: tuple = ()) -> list[Any]:
        """``actor(*init)`` built once per Ray Data actor (a pool of ``workers``), applied to each item."""
        if not items:
            return []
        import ray.data

        ds = ray.data.from_items(_rows(items), override_num_blocks=len(items))
        pool = ray.data.ActorPoolStrategy(size=min(self.workers, len(items)))
        return _results(ds.map(_ActorRow, fn_constructor_args=(actor, init), compute=pool).take_all())

    def _tasks(self, fn: Callable[..., Any], items: Sequence[Any], desc: str, extra: tuple) -> list[Any]:
        import ray

        remote = ray.remote(num_cpus=1)(_guarded)
        extra_refs = tuple(ray.put(e) for e in extra)
        refs = [remote.remote(fn, item, *extra_refs) for item in items]
        order = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, disable=not self.progress, leave=False) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[order[ref]] = ray.get(ref)
                    bar.update(1)
        return [_unwrap(r) for r in results]

    def close(self) -> None:
        """Shut down the Ray this engine started."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when nothing listens at a ``host:port`` Ray address."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ValueError(f"Ray address {address!r} does not answer ({reason} after at most {timeout:.0f} s). Start a "
                         "cluster there (`ray start --head`), pass --address auto for one running on this machine, "
                         "or leave --address out to start a local Ray") from None


def connect(address: str | None = None, workers: int | None = None) -> None:
    """``ray.init`` on a cluster at ``address`` (checked first: an address that does not answer is a
    clear error, not a hang) or, without one, a local Ray with ``workers`` CPUs."""
    import logging

    import ray

    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
             "configure_logging": True}
    if address in (None, "", "local"):
        try:
            ray.init(num_cpus=workers or os.cpu_count(), object_store_memory=512 * 2**20, **quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types
            raise ValueError(f"could not start a local Ray ({exc})") from None
        return
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise ValueError(f"Ray address {address!r} does not answer ({exc}). Start a cluster (`ray start --head`) "
                         "or leave --address out to start a local Ray") from None


def get_engine(engine: str, address: str | None = None, workers: int | None = None, progress: bool = True
               ) -> LocalEngine | RayEngine:
    """The engine named ``engine`` (``local`` or ``ray``)."""
    if engine == "local":
        if address is not None:
            raise ValueError("--address is for --engine ray; add --engine ray or leave --address out")
        return LocalEngine(progress)
    if engine == "ray":
        return RayEngine(address, workers, progress)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
