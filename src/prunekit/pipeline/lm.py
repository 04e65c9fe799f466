"""The stages that frame a language model's pruning: load it, calibrate (take calibration windows),
measure it (perplexity, size, speed; the dense and the pruned model timed interleaved), save it (a
folder ``transformers`` loads back, with ``prunekit.json`` and ``report.txt``).

``prunekit prune`` is ``load → calibrate → measure → <prune stage> → [measure → recover] → finalize →
measure → save``; a recipe's task does the loading, calibrating and measuring itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from pydantic import Field, field_validator

from ..core.config import Config
from .base import Stage, StageKind, StageResult, Workspace, register_stage

DEFAULT_MODEL = "smollm2-135m"


def _at_least(value: int, low: int, name: str, words: str) -> int:
    if value < low:
        raise ValueError(f"{name} must be {words}, got {value}")
    return value


# ------------------------------------------------------------------------------------------------- load


class LoadConfig(Config):
    """The model: an alias (smollm2-135m, gemma3-270m, minilm-l6), a Hugging Face folder or a .gguf file."""

    model: str = DEFAULT_MODEL


def _run_load(ws: Workspace, cfg: LoadConfig) -> StageResult:
    from ..models.hf import load_model, resolve_model_path

    ws.say(f"loading {cfg.model} ...")
    lm = load_model(cfg.model)
    ws.model, ws.tokenizer, ws.causal_lm = lm.model, lm.tokenizer, lm.causal_lm
    ws.source, ws.source_path = cfg.model, resolve_model_path(cfg.model)
    return StageResult({"model": cfg.model}, {"model": cfg.model, "source_path": str(ws.source_path)})


register_stage(StageKind("load", lambda d, where: LoadConfig.parse(d, where=where), _run_load,
                         "load a language model (an alias, a Hugging Face folder or a GGUF file)",
                         changes_model=False, setup=True, noun="loading", flags={"--model": "model"}))


# -------------------------------------------------------------------------------------------- calibrate


class CalibrateConfig(Config):
    """Calibration windows: ``nsamples`` windows of ``seqlen`` tokens from the calibration split of ``source``
    (pydocs, wikitext2, c4, a text file or a folder), drawn with ``seed``."""

    source: str = "pydocs"
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0

    @field_validator("nsamples", "seqlen")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        return _at_least(v, 1, info.field_name, "a positive integer")

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        return _at_least(v, 0, "seed", "0 or more")


def _check_context(ws: Workspace, kind: str, seqlen: int) -> None:
    from ..core.inputs import context_length

    ctx = context_length(ws.model)
    if ctx is not None and seqlen > ctx:
        flag = ws.name_of(kind, "seqlen")
        raise ValueError(f"{flag} {seqlen} is longer than the context of {ws.source} ({ctx} tokens, "
                         f"config.max_position_embeddings); use {flag} {ctx} or less")


def _run_calibrate(ws: Workspace, cfg: CalibrateConfig) -> StageResult:
    from ..core.inputs import check_token_ids
    from ..datasets.text import calibration_windows

    _check_context(ws, "calibrate", cfg.seqlen)
    ws.calibration = calibration_windows(ws.tokenizer, cfg.source, cfg.nsamples, cfg.seqlen, cfg.seed,
                                         default="source" not in cfg.model_fields_set, say=ws.say)
    check_token_ids(ws.calibration, ws.model, "calibration windows")
    ws.state["calibration_source"] = (cfg.source, "source" not in cfg.model_fields_set)
    ws.seed = cfg.seed
    info = {"source": cfg.source, "nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "seed": cfg.seed}
    return StageResult(info, {"calibration": info})


register_stage(StageKind("calibrate", lambda d, where: CalibrateConfig.parse(d, where=where), _run_calibrate,
                         "take calibration windows of text for the stages that need them",
                         changes_model=False, setup=True, noun="calibration",
                         flags={"--calib": "source", "--nsamples": "nsamples", "--seqlen": "seqlen",
                                "--seed": "seed"}))


# ---------------------------------------------------------------------------------------------- measure


class MeasureConfig(Config):
    """Measure the model as it is now, into the column ``label``: perplexity over ``windows`` windows of
    ``seqlen`` tokens of ``source``'s evaluation split (default: the calibration source, else pydocs),
    parameters, non-zeros, sizes, MACs with ``macs``. ``timing``: ``reference`` keeps the model (a copy)
    to time the later one against; ``compare`` times this model interleaved with the reference."""

    label: str = "after"
    key: str | None = None  # the figures' key in prunekit.json (default: the label)
    source: str | None = None
    windows: int = 16
    seqlen: int = 512
    macs: bool = False
    timing: Literal["none", "reference", "compare"] = "none"

    @field_validator("windows", "seqlen")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        return _at_least(v, 1, info.field_name, "a positive integer")


def _eval_source(ws: Workspace, cfg: MeasureConfig) -> tuple[str, bool]:
    if cfg.source is not None:
        return cfg.source, False
    calib, default = ws.state.get("calibration_source", ("pydocs", True))
    return calib, default


def _evaluation(ws: Workspace, cfg: MeasureConfig) -> Any:
    """The evaluation windows (taken once per source and size), or None for a model that is not a causal LM."""
    from ..core.inputs import check_token_ids
    from ..datasets.text import eval_windows

    if not ws.causal_lm:
        return None
    source, default = _eval_source(ws, cfg)
    key = ("evaluation", source, cfg.windows, cfg.seqlen)
    if key not in ws.state:
        windows = eval_windows(ws.tokenizer, source, cfg.windows, cfg.seqlen, default=default, say=ws.say)
        check_token_ids(windows, ws.model, "evaluation windows")
        ws.state[key] = windows
    return ws.state[key]


def _check_measure(ws: Workspace, cfg: MeasureConfig) -> None:
    _check_context(ws, "measure", cfg.seqlen)
    if not ws.causal_lm:
        ignored = [ws.name_of("measure", f) for f in ("source", "windows") if f in cfg.model_fields_set]
        if ignored and not ws.state.get("warned_not_causal"):
            ws.state["warned_not_causal"] = True
            ws.warn(f"{ws.source} is not a causal LM: perplexity is not measured, so {', '.join(ignored)} "
                    f"{'is' if len(ignored) == 1 else 'are'} ignored")
    _evaluation(ws, cfg)  # the evaluation text is checked before anything changes


def _dense_copy(model: Any) -> tuple[Any, str]:
    """A copy of the dense model to time beside the pruned one, when memory has room for it (under 40%
    of the memory available); else ``(None, why)``: the two are then timed apart."""
    import copy

    from ..infra.machine import available_memory

    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_memory()
    if free is not None and need > 0.4 * free:
        return None, f"no memory for a dense copy: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB available"
    return copy.deepcopy(model), ""


def _time_both(ws: Workspace, ref: dict[str, Any], last: str, forward: bool) -> dict[str, Any]:
    """The speed of the reference and the current model: interleaved when a copy of the reference was
    kept, else the reference's figures taken then beside the current model's taken now."""
    from ..metrics.lm import lm_speed

    first = ref["label"]
    if ref["copy"] is not None:
        return lm_speed({first: ref["copy"], last: ws.model}, ws.tokenizer, causal=ws.causal_lm, forward=forward)
    now = lm_speed({last: ws.model}, ws.tokenizer, causal=ws.causal_lm, forward=forward)
    then = ref["speed"]
    t = {**now["timing"], "interleaved": False, "models": [first, last], "apart": ref["apart"],
         "noisy": now["timing"]["noisy"] or then["timing"]["noisy"],
         "why": then["timing"]["why"] + now["timing"]["why"]}
    return {"models": {**then["models"], **now["models"]}, "ratios": {}, "timing": t}


def _run_measure(ws: Workspace, cfg: MeasureConfig) -> StageResult:
    from ..metrics.lm import lm_figures, lm_speed
    from ..metrics.size import weight_bytes

    ws.say({"reference": "measuring the dense model ...", "compare": "measuring the result ..."}.get(
        cfg.timing, f"measuring the {cfg.label} model ..."))
    figures = lm_figures(ws.model, _evaluation(ws, cfg), causal=ws.causal_lm, macs=cfg.macs, progress=ws.progress)
    meta: dict[str, Any] = {}
    if cfg.timing == "reference":
        copy_, apart = _dense_copy(ws.model)  # timed beside the changed model at the end, interleaved
        speed = None if copy_ is not None else lm_speed({cfg.label: ws.model}, ws.tokenizer, causal=ws.causal_lm,
                                                        forward=cfg.macs)
        if ws.source_path is not None:
            figures["file_bytes"] = weight_bytes(ws.source_path)
        ws.state["reference"] = {"label": cfg.label, "figures": figures, "copy": copy_, "speed": speed, "apart": apart}
    elif cfg.timing == "compare":
        ref = ws.state.pop("reference", None)
        if ref is None:
            raise ValueError("a measure stage with timing='compare' needs an earlier one with timing='reference'")
        ws.say("timing the dense and the pruned model, interleaved ..." if ref["copy"] is not None else "timing ...")
        timed = _time_both(ws, ref, cfg.label, cfg.macs)
        ref["figures"].update(timed["models"][ref["label"]])
        figures.update(timed["models"][cfg.label])
        ws.state["timed"] = timed
        meta["timing"] = {**timed["timing"], "ratios": timed["ratios"]}
    source, _ = _eval_source(ws, cfg)
    ws.columns[cfg.label] = figures
    meta.update({"evaluation": {"source": source, "windows": cfg.windows, "seqlen": cfg.seqlen}, cfg.key or cfg.label: figures})
    return StageResult({"label": cfg.label, **{k: v for k, v in figures.items() if not isinstance(v, dict)}}, meta)


register_stage(StageKind("measure", lambda d, where: MeasureConfig.parse(d, where=where), _run_measure,
                         "measure a language model: perplexity, size, MACs, and speed against an earlier measure",
                         check=_check_measure, changes_model=False, noun="measurement",
                         flags={"--ppl": "source", "--eval-windows": "windows", "--seqlen": "seqlen"}))


# ------------------------------------------------------------------------------------------------- save


class SaveConfig(Config):
    """Write the model to the folder ``out`` (``format``: safetensors, dense with zeros in place, or
    compressed: compressed-tensors' sparse layout; floats in ``dtype``, ``auto`` being the source's), with
    its tokenizer, ``prunekit.json`` and ``report.txt``. ``overwrite`` replaces a folder prunekit wrote."""

    out: str
    format: Literal["safetensors", "compressed"] = "safetensors"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    overwrite: bool = False


def refuse_nothing_to_compress(kind: str, field: str, stages: Sequence[Stage], name_of: Any) -> None:
    """Refuse a compressed output (stage ``kind``'s ``field`` says compressed) among ``stages`` that leave no
    zeros to compress: a stage that removes weights, or a prune stage at sparsity 0; then check that a
    reader here reads the compressed folder back. Before anything loads."""
    from .base import STAGES

    flag = name_of(kind, field)
    fmt = f"{flag} compressed"
    for other_kind, other in stages:
        entry = STAGES.get(other_kind)
        if entry.removes:
            what = entry.trigger if flag.startswith("--") and entry.trigger else f"stage {other_kind}"
            raise ValueError(f"{fmt} stores zeros compactly, and {what} removes weights instead of zeroing them, so "
                             "there would be nothing to compress: the model itself is smaller. Use "
                             f"{flag} safetensors (the default)")
        if getattr(other, "sparsity", None) == 0 and other_kind == "prune":
            raise ValueError(f"{fmt} with {name_of('prune', 'sparsity')} 0: no weight would be zero, so the compressed "
                             f"folder would be larger than the dense one. Use {flag} safetensors")
    from ..export.save import check_compressed_readable

    check_compressed_readable()  # a folder no reader here reads back is refused before any work


def _validate_save(cfg: SaveConfig, stages: Sequence[Stage], name_of: Any) -> None:
    if cfg.format == "compressed":
        refuse_nothing_to_compress("save", "format", stages, name_of)


@contextlib.contextmanager
def _prepare_save(ws: Workspace, cfg: SaveConfig) -> Iterator[Path]:
    from ..infra.atomic import output_folder

    with output_folder(Path(cfg.out), overwrite=cfg.overwrite) as folder:  # checks and locks out before any work
        ws.folder = folder
        yield folder


def _check_save(ws: Workspace, cfg: SaveConfig) -> None:
    from ..infra.atomic import check_writable
    from ..export.dtype import resolve_dtype

    ws.state["save_dtype"] = resolve_dtype(cfg.dtype, ws.source)  # after loading: the loader's errors name bad files
    check_writable(ws.folder, needed_bytes=sum(p.numel() * p.element_size() for p in ws.model.parameters()))


def save_pruned(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any], report_text: Any,
                fmt: str = "safetensors", dtype: Any = None) -> Any:
    """Write the model (``fmt``: safetensors or compressed, floats in ``dtype``), tokenizer, prunekit.json and
    report.txt into ``folder``. ``report_text`` may be a function of what was saved (its bytes on disk go
    in the table); returns what was saved (:class:`prunekit.export.SavedModel`)."""
    from ..infra.meta import write_meta
    from ..export.dtype import SaveDtype
    from ..export.save import plan_save, save_model
    from ..slicing.per_layer import mark_sliced

    dtype = dtype or SaveDtype(next(model.parameters()).dtype, "the model's dtype")
    plan = plan_save(model, fmt, dtype)  # every check (e.g. no sparsity to compress) before writing
    saved = save_model(model, tokenizer, folder, fmt, dtype, plan)
    mark_sliced(folder)  # a per-layer SliceGPT model: only prunekit.slicing.load_sliced reads it
    meta["saved"] = saved.to_dict()
    text = report_text(saved) if callable(report_text) else report_text
    write_meta(folder, meta)
    (folder / "report.txt").write_text(text + "\n")
    return saved


def _run_save(ws: Workspace, cfg: SaveConfig) -> StageResult:
    from .report import render_lm_report

    if ws.folder is None:
        raise ValueError("a save stage writes into the folder its prepare step opens; run it with run_stages")
    columns = list(ws.columns.values())

    def render(saved: Any) -> str:
        if columns:
            columns[-1]["file_bytes"] = saved.weight_bytes
        return render_lm_report(ws, saved)

    saved = save_pruned(ws.model, ws.tokenizer, ws.folder, ws.meta, render, cfg.format, ws.state.get("save_dtype"))
    ws.state["report"] = render_lm_report(ws, saved)
    return StageResult({"out": cfg.out, **saved.to_dict()}, {"saved": saved.to_dict()})


register_stage(StageKind("save", lambda d, where: SaveConfig.parse(d, where=where), _run_save,
                         "save a language model as a folder transformers loads back, with prunekit.json",
                         check=_check_save, prepare=_prepare_save, validate=_validate_save, changes_model=False,
                         noun="saving", flags={"--out": "out", "--format": "format", "--dtype": "dtype",
                                               "--overwrite": "overwrite"}))

