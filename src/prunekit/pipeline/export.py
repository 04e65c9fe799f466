"""The export stage: write the model where users run it (:func:`prunekit.export.export`), as one of the
registered exporters (:data:`prunekit.export.EXPORTERS`: a dense safetensors folder, a compressed-tensors
sparse folder, a GGUF file), to its own ``out``:

    - stage: export
      to: gguf            # any exporter's fields (quant: q8_0; dtype: bfloat16 for the folders)
      out: pruned.gguf
      overwrite: false

The stage's config is the exporter's config with ``out`` and ``overwrite`` added, so a new exporter is a
new stage config with nothing to write here. Every check ``prunekit export`` makes before loading runs
before any stage changes the model: the target can be written (a ``.gguf`` file, or a folder that is
missing, empty or prunekit's with ``overwrite``), it is not the model's source, no two outputs are one
path, and a compressed folder has something to compress and a reader here.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from pydantic import create_model

from ..core.config import Config, ConfigError
from .base import Stage, StageKind, StageResult, Workspace, register_stage

OUTPUT_FIELDS = ("out", "overwrite")


@functools.cache
def stage_config(to: str) -> type[Config]:
    """The export stage's config class for exporter ``to``: its config plus ``out`` and ``overwrite``."""
    from ..export import EXPORTERS

    base = EXPORTERS.config(to)
    name = f"{base.__name__}Stage"
    cls = create_model(name, __base__=base, __module__=__name__, out=(str, ...), overwrite=(bool, False))
    cls.__doc__ = (f"{base.__doc__}\n\nWritten to ``out`` (``overwrite`` replaces a file, or a folder prunekit "
                   "wrote).")
    return cls


def __getattr__(name: str) -> type[Config]:
    """A stage config class by its name (how pickle finds one, in any process)."""
    from ..export import EXPORTERS

    for to in EXPORTERS.names():
        if stage_config(to).__name__ == name:
            return stage_config(to)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exporter_config(cfg: Config) -> Config:
    """The exporter's own config inside an export stage's config (without ``out`` and ``overwrite``)."""
    from ..export import EXPORTERS

    return EXPORTERS.parse_config({k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_FIELDS})


def _parse_export(d: Mapping[str, Any], where: str | None) -> Config:
    from ..export import EXPORTERS

    at = f"{where}: " if where else ""
    if "to" not in d:
        msg = f"stage 'export' needs 'to:' (one of {', '.join(EXPORTERS.names())})"
        raise ConfigError(at + msg, [(("to",), msg)])
    try:
        cls = stage_config(d["to"])
    except (ValueError, TypeError) as exc:  # an unknown exporter: the registry's error names the known ones
        raise ConfigError(f"{at}{exc}", [(("to",), str(exc))]) from None
    return cls.parse(d, where=where)


def _validate_export(cfg: Config, stages: Sequence[Stage], name_of: Any) -> None:
    """Against the other stages, before anything loads: no two outputs are one path; a compressed folder
    follows no stage that removes weights, and something here reads it back."""
    from ..infra.atomic import check_distinct
    from .lm import refuse_nothing_to_compress

    outs = {f"stages[{i}] ({kind}) out": other.out for i, (kind, other) in enumerate(stages)
            if kind in ("export", "save")}
    check_distinct(outs)
    if cfg.to == "compressed":
        refuse_nothing_to_compress("export", "to", stages, name_of)


def _check_export(ws: Workspace, cfg: Config) -> None:
    """What ``prunekit export`` checks before loading, here before any stage changes the model."""
    from ..infra.atomic import check_distinct, check_output_folder
    from ..export import EXPORTERS, check_file_target
    from ..export.dtype import resolve_dtype

    if ws.tokenizer is None:
        raise ValueError("stage 'export' writes a language model with its tokenizer, and this task has none "
                         "(export a Hugging Face model: a recipe's lm task, or prunekit prune's model)")
    if ws.source_path is not None:  # replacing the input would lose it
        check_distinct({ws.name_of("export", "out"): cfg.out}, {"the model": ws.source_path})
    if EXPORTERS.get(cfg.to) == "file":
        check_file_target(cfg.out, cfg.overwrite)
    else:
        check_output_folder(cfg.out, cfg.overwrite)
        resolve_dtype(cfg.dtype, ws.source)  # a dtype the source cannot give fails now
        if cfg.to == "compressed":
            from ..export.save import check_compressed_readable

            check_compressed_readable()


def _run_export(ws: Workspace, cfg: Config) -> StageResult:
    from ..export import export

    ws.say(f"exporting {cfg.to} to {cfg.out} ...")
    meta = {k: v for k, v in ws.meta.items() if k not in ("export", "saved")}
    if ws.source is not None:
        meta.setdefault("model", ws.source)
    report = export(ws.model, ws.tokenizer, cfg.out, exporter_config(cfg), source=ws.source,
                    overwrite=cfg.overwrite, meta=meta, progress=ws.progress)
    record = {"to": report.to, "path": report.path, "bytes": report.bytes, "dtype": report.dtype,
              "quant": report.detail.get("quant"), "layout": report.detail.get("layout"), "notes": report.notes}
    ws.state.setdefault("exports", []).append(report)
    return StageResult(record, {"exports": [*ws.meta.get("exports", []), record]})


register_stage(StageKind(
    "export", _parse_export, _run_export,
    "write the model where users run it (prunekit.export): a safetensors or compressed folder, or a GGUF file",
    check=_check_export, validate=_validate_export, changes_model=False, in_recipes=True, noun="exporting"))
