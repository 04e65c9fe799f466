"""Run a recipe: expand it into runs, skip those already in the store, run the rest, store each.

    runs = pk.bench.run(Recipe.from_yaml("recipes/cnn-digits.yaml"))     # a list of Run records

A run is keyed by a hash of its config and of the task's identity (the model file's fingerprint,
the data, the software versions, the thread count), so running a recipe again after a kill picks
up where it stopped: finished runs are skipped unless ``force``. Each run prunes a fresh copy of
the dense model, times the pruned model interleaved with the dense one, records wall and CPU time
and the peak memory the stages added, and is written to the store in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from typing import Any, Callable

from tqdm.auto import tqdm

from ..metrics.macs import COUNTER as MACS_COUNTER
from ..pipeline import Workspace, run_stages
from ..recipe.schema import Recipe, RunSpec
from .memory import PeakMemory
from .protocol import card_hash, comparable_key
from .store import DEFAULT_DB, Run, Store
from .tasks import fresh_copy, make_context


def run_key(spec: RunSpec, identity: dict[str, Any]) -> str:
    """The store key of a run: a hash of its config and its task's identity."""
    blob = json.dumps({"config": spec.config_dict(), "identity": identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def workspace(ctx: Any, model: Any, seed: int) -> Workspace:
    """The workspace a run's stages share: the model copy and what the task gives them (calibration
    windows, the tokenizer and the source for a language model; batches, loss and a training set for a
    classifier, with the builder of fresh models a data stage's proxies need)."""
    inputs = ctx.stage_inputs(seed)
    lm = getattr(ctx, "lm", None)  # a language-model task: the tokenizer and the source an export stage writes
    return Workspace(model=model, tokenizer=getattr(lm, "tokenizer", None), source=getattr(lm, "source", None),
                     source_path=getattr(ctx, "path", None), calibration=inputs.get("calibration"),
                     data=inputs.get("data"), loss_fn=inputs.get("loss_fn"),
                     example_inputs=inputs.get("example_inputs"), train_set=getattr(ctx, "train_set", None),
                     model_fn=getattr(ctx, "build", None), seed=seed, progress=False)


def execute(ctx: Any, spec: RunSpec, key: str) -> Run:
    """Run one spec on a fresh copy of the dense model and measure it (a failure is recorded, not raised)."""
    started = time.time()
    t0 = time.perf_counter()
    figures: dict[str, Any] = {}
    try:
        dense = ctx.dense(spec.seed)
        model = fresh_copy(dense)
        ws = workspace(ctx, model, spec.seed)
        with PeakMemory() as mem:
            w0, c0 = time.perf_counter(), time.process_time()
            stages = run_stages(spec.stages, ws).records  # the stages prunekit prune runs, checked first
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        figures = ctx.measure(model, spec.seed, spec.measures, baseline=not spec.stages)
        figures.update(prune_seconds=wall, prune_cpu_seconds=cpu, stages=stages)
        for record in stages:  # figures a stage measured itself (the engine stage's llama_cpp_*)
            figures.update(record.get("figures") or {})
        if "memory" in spec.measures:
            figures["memory_added_bytes"] = mem.added_bytes
        status, error = "ok", None
        protocol = ctx.protocol(spec.seed)
        if "macs" in spec.measures:
            protocol["macs_counter"] = MACS_COUNTER  # which counter counted them: runs of two are not compared
    except Exception as exc:  # recorded in the store; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        protocol = ctx.identity()
    protocol["card_hash"] = card_hash(protocol)
    return Run(key, spec.recipe, spec.label, spec.task.task, spec.task.model, spec.config_dict(), spec.settings,
               protocol, comparable_key(protocol), figures, status, error, started, time.perf_counter() - t0)


def run(recipe: Recipe, *, db: str = DEFAULT_DB, force: bool = False, progress: bool = True,
        say: Callable[[str], None] = print) -> list[Run]:
    """Run every run of ``recipe`` not already in the store ``db`` (all of them with ``force``) and
    return the records of all of them, in the recipe's order."""
    specs = recipe.runs()
    ctx = make_context(recipe.task, progress=progress, say=say)
    identity = ctx.identity()
    out: list[Run] = []
    with Store(db) as store:
        bar = tqdm(specs, desc=f"sweep {recipe.name}", disable=not progress, unit="run")
        for spec in bar:
            key = run_key(spec, identity)
            if not force and store.has(key):
                out.append(store.get(key))
                continue
            bar.set_postfix_str(spec.label[:40])
            record = execute(ctx, spec, key)
            store.put(record)
            if record.status != "ok":
                say(f"run {spec.label} failed: {record.error.splitlines()[0]}")
            out.append(record)
    return out
