"""The engine stage: measure the GGUF file an ``export`` stage wrote where small models run, in llama.cpp itself —
decode and prefill tokens/s with ``llama-bench`` (``threads`` threads, ``rounds`` interleaved rounds with their
spread, paired against ``baseline`` when given) and perplexity with ``llama-perplexity`` on the held-out split of
``text`` — and put the figures into the run's record, which the results store keeps and the report plots
(quality against llama.cpp decode speed):

    - stage: shrink
      target: params=0.6
      distill: {steps: 200, text: pydocs}
    - stage: export
      to: gguf
      quant: q8_0
      out: shrunk-q8_0.gguf
    - stage: engine
      baseline: smollm2-135m-q8_0.gguf   # optional: the dense model's GGUF, timed interleaved
      rounds: 5
      threads: 1

The figures (:func:`engine_figures`) are named ``llama_cpp_*``: ``llama_cpp_decode_tokens_per_s`` and
``llama_cpp_decode_spread`` (IQR / median of the rounds), the same for prefill, ``llama_cpp_perplexity`` with its
standard error, the file's bytes and type, and with a baseline its figures and the paired speed-ups. The bench
runner copies a stage record's ``figures`` into the run's figures (:mod:`prunekit.bench.runner`).

Checked before any stage changes the model (the stage list is checked before anything loads): a GGUF ``export``
comes before this stage, llama.cpp's tools are built (``make llama-cpp``), and the baseline is a GGUF file that
is not the one the export writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from ..core.config import Config
from .base import StageKind, StageResult, Workspace, register_stage

PREFIX = "llama_cpp_"


class EngineConfig(Config):
    """Measure the GGUF file the last ``export`` stage before this one wrote, in llama.cpp: ``rounds`` interleaved
    ``llama-bench`` rounds (prefill ``prompt_tokens``, decode ``gen_tokens``, ``threads`` threads), against
    ``baseline`` (a GGUF file, e.g. the dense model's at the same type; None: no pairing), and ``llama-perplexity``
    over ``chunks`` windows of ``ctx`` tokens of ``text``'s held-out split (pydocs, a text file or a folder; None:
    no perplexity)."""

    stage: Literal["engine"] = "engine"
    baseline: str | None = None
    rounds: int = Field(5, ge=2)
    threads: int = Field(1, ge=1)
    prompt_tokens: int = Field(128, ge=1)
    gen_tokens: int = Field(32, ge=1)
    text: str | None = "pydocs"
    ctx: int = Field(512, ge=8)
    chunks: int | None = Field(16, ge=1)


def _parse(d: Mapping[str, Any], where: str | None) -> EngineConfig:
    return EngineConfig.parse({"stage": "engine", **d}, where=where)


def _tools(cfg: EngineConfig) -> list[str]:
    return ["llama-bench"] + (["llama-perplexity"] if cfg.text is not None else [])


def _validate(cfg: EngineConfig, stages: Sequence[Any], name_of: Any) -> None:
    """Before anything loads: a GGUF export before this stage, llama.cpp built, the baseline a GGUF file."""
    from ..export.llama_cpp import llama_cpp_home, llama_cpp_tool
    from ..metrics.engine_speed import _check_files

    before = []
    for kind, other in stages:
        if other is cfg:
            break
        before.append((kind, other))
    exports = [other for kind, other in before if kind == "export" and getattr(other, "to", None) == "gguf"]
    if not exports:
        raise ValueError("stage engine measures the GGUF file an export stage writes, and no 'export' with 'to: gguf' "
                         "comes before it: list one (to: gguf, quant: q8_0, out: model.gguf) before the engine stage")
    missing = [t for t in _tools(cfg) if llama_cpp_tool(t) is None]
    if missing:
        raise FileNotFoundError(f"stage engine runs llama.cpp's {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                                f"not built in {llama_cpp_home() / 'bin'}: run 'make llama-cpp' (once; tens of minutes)")
    if cfg.baseline is not None:
        _check_files({"baseline": cfg.baseline})
        if Path(cfg.baseline).resolve() == Path(exports[-1].out).resolve():
            raise ValueError(f"stage engine's baseline {cfg.baseline} is the file the export stage writes; give the "
                             "dense model's GGUF as the baseline")


def _check(ws: Workspace, cfg: EngineConfig) -> None:
    """Once the model is loaded: the held-out text is there (held-out documents, before anything is timed)."""
    if cfg.text is not None:
        from ..datasets.text import documents, split_documents

        docs = split_documents(documents(cfg.text, default=cfg.text == "pydocs", say=lambda t: None), "evaluation")
        if not any(d.text.strip() for d in docs):
            raise ValueError(f"stage engine's text {cfg.text!r} has no held-out (evaluation) documents for "
                             "llama-perplexity; give a larger text or set text: null")


def _exported(ws: Workspace) -> str:
    reports = [r for r in ws.state.get("exports", []) if getattr(r, "to", None) == "gguf"]
    if not reports:  # validate found an export stage before this one: it ran and reported, or raised
        raise RuntimeError("stage engine found no GGUF file written by an export stage; please report this")
    return reports[-1].path


def engine_figures(speed: Mapping[str, Any], perplexity: Mapping[str, Any], quant: str | None = None
                   ) -> dict[str, Any]:
    """The flat ``llama_cpp_*`` figures of a measurement (``speed``: :meth:`EngineSpeed.to_dict` of a ``model`` file
    and optionally a ``baseline``; ``perplexity``: name → :meth:`EnginePerplexity.to_dict`)."""
    out: dict[str, Any] = {}
    for name, key in (("model", ""), ("baseline", "baseline_")):
        m = speed["models"].get(name)
        if m is None:
            continue
        for phase in ("decode", "prefill"):
            out[f"{PREFIX}{key}{phase}_tokens_per_s"] = m[f"{phase}_tokens_per_s"]
            out[f"{PREFIX}{key}{phase}_spread"] = m[phase]["spread"]
        out[f"{PREFIX}{key}gguf_bytes"] = m["bytes"]
        if name in perplexity:
            out[f"{PREFIX}{key}perplexity"] = perplexity[name]["perplexity"]
            out[f"{PREFIX}{key}perplexity_stderr"] = perplexity[name]["stderr"]
    for phase in ("decode", "prefill"):
        ratio = (speed.get("speedups") or {}).get("model", {}).get(phase)
        if ratio is not None:
            out[f"{PREFIX}{phase}_speedup"] = ratio["median"]
            out[f"{PREFIX}{phase}_speedup_iqr"] = ratio["iqr"]
    out.update({f"{PREFIX}threads": speed["threads"], f"{PREFIX}rounds": speed["rounds"],
                f"{PREFIX}noisy": speed["noisy"], f"{PREFIX}quant": quant, f"{PREFIX}engine": speed["engine"]})
    return out


def _run(ws: Workspace, cfg: EngineConfig) -> StageResult:
    from ..metrics.engine_speed import gguf_figures

    path = _exported(ws)
    files = {"baseline": cfg.baseline, "model": path} if cfg.baseline else {"model": path}
    ws.say(f"measuring {path} in llama.cpp ({cfg.rounds} interleaved rounds, {cfg.threads} thread(s)"
           + (f", against {cfg.baseline}" if cfg.baseline else "") + ") ...")
    w0, c0 = time.perf_counter(), time.process_time()
    out = gguf_figures(files, cfg.text, ctx=cfg.ctx, chunks=cfg.chunks, rounds=cfg.rounds,
                       prompt_tokens=cfg.prompt_tokens, gen_tokens=cfg.gen_tokens, threads=cfg.threads,
                       progress=ws.progress)
    speed = out["speed"].to_dict()
    quant = next((r.detail.get("quant") for r in reversed(ws.state.get("exports", [])) if r.path == path), None)
    figures = engine_figures(speed, out["perplexity"], quant)
    record = {"file": path, "baseline": cfg.baseline, "figures": figures, "speed": speed,
              "perplexity": out["perplexity"], "seconds": time.perf_counter() - w0,
              "cpu_seconds": time.process_time() - c0,
              "evaluation": None if cfg.text is None else {"source": cfg.text, "split": "evaluation", "ctx": cfg.ctx,
                                                           "chunks": cfg.chunks, "tool": "llama-perplexity"}}
    headline = f"llama.cpp: {str(out['speed']).splitlines()[-1]}"
    return StageResult(record, {"engine": record}, headline)


register_stage(StageKind(
    "engine", _parse, _run,
    "measure the exported GGUF file in llama.cpp: decode/prefill tokens/s (llama-bench, interleaved rounds, paired "
    "with a baseline GGUF) and held-out perplexity (llama-perplexity), into the run's figures",
    check=_check, validate=_validate, changes_model=False, in_recipes=True, noun="measuring in llama.cpp"))
