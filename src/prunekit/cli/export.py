"""``prunekit export``: write a (pruned) model where users run it — a GGUF file for llama.cpp-based
runtimes, a compressed-tensors sparse folder, or a dense safetensors folder in the dtype asked.

    prunekit export pruned/ --to gguf --quant q8_0 --out pruned.gguf
    prunekit export pruned/ --to gguf --quant source --out pruned-q4_1.gguf   # the source GGUF's own types
    prunekit export pruned/ --to gguf --quant q4_K_M --out pruned-q4_k_m.gguf # via llama.cpp's llama-quantize
    prunekit export pruned/ --to compressed --out pruned-compressed/

Nothing is reported written until it reads back: the folder with this environment's from_pretrained,
the GGUF file with transformers' GGUF reader (and llama.cpp's llama-simple where 'make llama-cpp' built
it), logits compared with the model in memory. --to compressed needs a reader of the compressed-tensors
sparse layouts (transformers 4.x with compressed-tensors <= 0.14): this environment, or the python that
PRUNEKIT_COMPRESSED_READER names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_common, emit, say


def add_parser(subs: argparse._SubParsersAction) -> None:
    from ..export.dtype import DTYPE_CHOICES
    from ..export.gguf import QUANT_CHOICES

    p = subs.add_parser("export", help="write a model as GGUF, compressed safetensors or dense safetensors",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a pruned folder, a Hugging Face folder, a .gguf file or an alias")
    p.add_argument("--to", required=True, choices=["gguf", "compressed", "safetensors"], help="what to write")
    p.add_argument("--quant", default=None, metavar="TYPE",
                   help=f"with --to gguf: {', '.join(QUANT_CHOICES)} (default q8_0), or a K-quant (q4_K_M, q5_K_M, "
                        "q6_K, …) written through llama.cpp's llama-quantize ('make llama-cpp' builds it)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="with --to compressed/safetensors: auto (default: the source's dtype, bf16 for GGUF)")
    p.add_argument("--out", required=True, help="the .gguf file, or the folder, to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (a file or a folder prunekit wrote)")
    add_common(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if args.to == "gguf":
        if args.dtype != "auto":
            raise ValueError("--dtype applies to --to compressed/safetensors; a GGUF file's types come from --quant")
        return {"to": "gguf", "quant": args.quant or "q8_0"}
    if args.quant is not None:
        raise ValueError("--quant applies to --to gguf only")
    return {"to": args.to, "dtype": args.dtype}


def _description(meta: dict[str, Any] | None) -> str | None:
    if not meta:
        return None
    settings = meta.get("settings") or {}
    what = ", ".join(f"{k} {v}" for k, v in settings.items())
    return f"pruned with prunekit {meta.get('prunekit_version', '')}: {meta.get('method', '')} ({what})".strip()


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..infra.atomic import check_distinct, check_output_folder
    from ..export import EXPORTERS, check_file_target, export, find_source_gguf
    from ..export.load import load_artifact
    from ..models.hf import read_prunekit_json, resolve_model_path

    config = EXPORTERS.parse_config(_config(args))
    resolve_model_path(args.model)  # a clear error for a path that is no model, before loading
    check_distinct({"--out": args.out}, {"--model": args.model})  # replacing the input would lose it
    if args.to == "gguf":  # every check that needs no model, before loading it
        check_file_target(args.out, args.overwrite)
    else:
        check_output_folder(args.out, args.overwrite)
    meta = read_prunekit_json(args.model) if Path(args.model).is_dir() else None
    say(args, f"loading {args.model} ...")
    lm = load_artifact(args.model)
    say(args, f"writing {args.to} to {args.out} ...")
    folder_meta = {**(meta or {"model": str(args.model)}), "prunekit_version": __version__, "exported_from": str(args.model)}
    folder_meta.pop("export", None)
    folder_meta.pop("saved", None)
    report = export(lm.model, lm.tokenizer, args.out, config, source=args.model, overwrite=args.overwrite,
                    meta=folder_meta, description=_description(meta), progress=not (args.quiet or args.json))
    data = {**report.to_dict(), "source": str(args.model),
            "source_gguf": str(find_source_gguf(args.model) or "") or None}
    emit(args, data, str(report))
    return 0
