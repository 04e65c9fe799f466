"""``prunekit shrink``: a smaller dense language model under a budget — heads, MLP neurons, residual width and
depth cut to a uniform shape (Minitron-style), optionally recovered by logit distillation from the unpruned
model — saved as a folder stock ``from_pretrained`` reads (checked: the folder is read back and its logits
compared before success is printed).

    prunekit shrink --model smollm2-135m --target params=0.6 --kd-steps 200 --out smollm2-shrunk

``--target params=F`` keeps at most F of the non-embedding parameters (all but the input embedding and the LM
head); ``memory=F`` at most F of the weights' bytes (every parameter, at the model's dtype); ``speed=S`` a decode
S times the dense model's, measured on this machine (1 thread; in transformers, or with ``--speed-engine llama.cpp``
in llama.cpp: GGUF files of ``--speed-quant``, q8_0 by default, timed with llama-bench). ``--search per-layer`` gives every block its own
key/value groups and MLP width (and may remove blocks with ``--axes heads,neurons,depth``), chosen by an exact
MILP (``--optimizer greedy``: greedily); such a folder is read back with ``prunekit.shrink.load_shrunk``.

Recovery (``--kd-steps N``): ``--recover kd`` (default) distils the unpruned model's next-token distributions
into every weight; ``--recover next-token`` fine-tunes on the text's next tokens, no teacher; ``--recover lora``
distils into rank ``--lora-rank`` LoRA adapters (plus biases and norms) merged into the weights at the end.
``--kd-ce-weight W`` adds the text's cross-entropy to the KD loss, ``--kd-hidden-weight W`` Minitron's
hidden-state loss (not with the residual width cut), ``--kd-precision bf16`` runs the recovery's products in bf16
autocast. ``--schedule adapt --rounds N`` runs Adapt-Pruner's
schedule instead of one cut then one recovery: N per-layer cuts, each followed by its share of the steps.

``--vocab TEXT`` also keeps only the tokens TEXT uses. The cut comes after the shrink and before the recovery,
in the student and in a copy of the teacher alike (one plan), so the recovery reads the text in the cut
tokenizer's ids and its LM head and softmaxes are smaller: SmolLM2 on pydocs distils 1.18× faster (49,152 →
23,031 rows; ``benchmarks/results/shrink_kd_threads_vocab.json``). With ``--schedule adapt`` the cut comes after
the rounds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import add_common, emit
from .shrink_run import shrink_and_save

DEFAULT_MODEL = "smollm2-135m"
# --recover's choices as DistillConfig fields (every other field: DistillConfig's default or its own flag)
RECOVERIES = {"kd": {"objective": "kd", "train": "full"}, "next-token": {"objective": "next_token", "train": "full"},
              "lora": {"objective": "kd", "train": "lora"}}
SCHEDULES = ("one-shot", "adapt")
# how check_recovery words its refusals on this command line
CLI_NAMES = {"hidden_weight": "--kd-hidden-weight", "hidden": "--axes hidden",
             "fix_hidden": "pass --axes without hidden (e.g. heads,neurons,depth) or drop --kd-hidden-weight",
             "ce_weight": "--kd-ce-weight", "next_token": "--recover next-token",
             "fix_ce": "drop --kd-ce-weight or use --recover kd"}


def add_parser(subs: argparse._SubParsersAction) -> None:
    from ..shrink.distill import DistillConfig
    from ..shrink.schedule import AdaptConfig
    from ..shrink.search import DEFAULT_CANDIDATES

    default = {**{n: f.default for n, f in DistillConfig.model_fields.items()},
               "rounds": AdaptConfig.model_fields["rounds"].default}  # shown in the help, set only in the configs
    p = subs.add_parser("shrink", help="cut a decoder to a smaller dense shape under a budget, distil, save",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="an alias (smollm2-135m, gemma3-270m), a Hugging Face "
                                                          "folder or a .gguf file (default smollm2-135m)")
    p.add_argument("--target", default="params=0.6",
                   help="params=F (non-embedding parameters kept, default 0.6) or memory=F (weight bytes kept)")
    p.add_argument("--search", choices=["auto", "uniform", "per-layer"], default="auto",
                   help="uniform: one shape for every block (a grid scored on calibration loss); per-layer: each "
                        "block its own widths (scored per block, chosen by --optimizer); auto (default): per-layer "
                        "for speed= and --schedule adapt, uniform otherwise")
    p.add_argument("--speed-engine", choices=["transformers", "llama.cpp"], default="transformers",
                   help="where speed= is timed: transformers (default, this process, CPU time) or llama.cpp (the dense "
                        "model and per-width probes written as GGUF files to a temporary folder and timed with "
                        "llama-bench; 'make llama-cpp' builds it)")
    p.add_argument("--speed-quant", default=None, metavar="TYPE",
                   help="--speed-engine llama.cpp: the GGUF type timed (default q8_0; f16, q4_0 …)")
    p.add_argument("--width-multiple", type=int, default=None, metavar="N",
                   help="cut widths (MLP, residual, heads × head_dim) are multiples of N: 32 (default; llama.cpp's "
                        "q8_0/q4_0 blocks) or 256 (its K-quants' super-blocks; the default when --speed-quant names a "
                        "K-quant such as q4_K_M)")
    p.add_argument("--optimizer", choices=["milp", "greedy"], default="milp",
                   help="per-layer search: exact MILP (default) or greedy")
    p.add_argument("--score-windows", type=int, default=4,
                   help="per-layer search: calibration windows each option is scored on (default 4)")
    p.add_argument("--axes", default=None,
                   help="what may shrink, comma-separated: heads, neurons, hidden, depth (default: all four for the "
                        "uniform search, heads,neurons per layer)")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                   help="dtype of the saved model (default f32; bf16 halves the folder, read back and compared)")
    p.add_argument("--importance", choices=["activation", "magnitude"], default="activation",
                   help="how channels, heads and neurons are ranked: activation (Minitron's, default) or magnitude")
    p.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES,
                   help=f"shapes near the budget scored by calibration loss (default {DEFAULT_CANDIDATES}; 1: no scoring)")
    p.add_argument("--calib", default="pydocs", metavar="TEXT",
                   help="calibration text: pydocs (default), a text file or a folder")
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows (default 16)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration / evaluation window (default 256)")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample and the distillation text")
    p.add_argument("--kd-steps", type=int, default=0, help="recovery steps after the cut (default 0: none; --recover says how)")
    p.add_argument("--kd-batch", type=int, default=4, help="windows per distillation step (default 4)")
    p.add_argument("--kd-seqlen", type=int, default=256, help="tokens per distillation window (default 256)")
    p.add_argument("--kd-lr", type=float, default=2e-4, help="distillation learning rate (default 2e-4)")
    p.add_argument("--kd-text", default=None, metavar="TEXT",
                   help="distillation text (default: --calib's source; its held-out split is never used)")
    p.add_argument("--recover", choices=sorted(RECOVERIES), default=None,
                   help="how --kd-steps recover the model: kd (default: logit distillation from the unpruned model, "
                        "every weight trained), next-token (fine-tuning on the text's next tokens, no teacher), lora "
                        "(logit distillation into LoRA adapters merged into the weights at the end)")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help=f"--recover lora: the adapters' rank (default {default['lora_rank']})")
    p.add_argument("--kd-ce-weight", type=float, default=None, metavar="W",
                   help=f"add W × the text's next-token cross-entropy to the KD loss (default "
                        f"{default['ce_weight']:g})")
    p.add_argument("--kd-hidden-weight", type=float, default=None, metavar="W",
                   help="add W × Minitron's hidden-state loss (each block's output against the teacher's; needs the "
                        f"residual width kept: --axes without hidden; default {default['hidden_weight']:g})")
    p.add_argument("--kd-precision", choices=["fp32", "bf16"], default=None,
                   help="the recovery's forward and backward products: fp32 (default) or bf16 autocast (weights and "
                        "optimizer in fp32; 1.6-1.9x faster on CPUs with native bf16, slower without)")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="one-shot",
                   help="one-shot (default): one cut, then --kd-steps of recovery; adapt: Adapt-Pruner's schedule, "
                        "--rounds per-layer cuts each followed by its share of --kd-steps")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help=f"--schedule adapt: the number of cut-and-train rounds (default {default['rounds']})")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="write a distillation checkpoint into DIR every --checkpoint-every steps")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    p.add_argument("--resume", action="store_true",
                   help="continue the distillation from --checkpoint (same command otherwise)")
    p.add_argument("--vocab", default=None, metavar="TEXT",
                   help="also trim the vocabulary to the tokens TEXT's calibration split uses (pydocs, a text file or "
                        "a folder), plus byte and special tokens; the saved tokenizer encodes that text identically "
                        "and other text with more, smaller pieces (prunekit.shrink.vocab). Cut after the shrink and "
                        "before the distillation, in student and teacher alike, so distilling is faster too")
    p.add_argument("--no-time", action="store_true", help="skip the paired generation-speed measurement")
    p.add_argument("--out", default=None, help="output folder (default shrunk-<model name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a folder prunekit wrote (any other folder is never replaced)")
    add_common(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """Every option is checked before any work; an option that would be ignored is an error."""
    from ..shrink.budget import parse_target
    from ..shrink.distill import DistillConfig
    from ..shrink.perlayer import check_per_layer_axes
    from ..shrink.search import check_axes
    from ..shrink.search_layers import DEFAULT_PER_LAYER_AXES

    args.target_ = parse_target(args.target)
    adapt = args.schedule == "adapt"
    if args.search == "auto":
        args.search = "per-layer" if args.target_.kind == "speed" or adapt else "uniform"
    if args.rounds is not None and not adapt:
        raise ValueError("--rounds counts the cuts of --schedule adapt; add --schedule adapt or drop --rounds")
    if adapt and args.target_.kind == "speed":
        raise ValueError("--schedule adapt cuts to params= or memory= (a count fixed against the original model); "
                         "speed= is measured on the model as it is: use --schedule one-shot")
    if adapt and args.search != "per-layer":
        raise ValueError("--schedule adapt cuts per layer in every round: use --search per-layer (or auto)")
    if args.search == "uniform" and args.target_.kind == "speed":
        raise ValueError("--target speed= is a measured latency, searched per layer: use --search per-layer (or auto)")
    if args.target_.kind != "speed" and (args.speed_engine != "transformers" or args.speed_quant is not None):
        given = "--speed-engine" if args.speed_engine != "transformers" else "--speed-quant"
        raise ValueError(f"{given} applies to --target speed=, and the target is {args.target_}")
    if args.speed_quant is not None and args.speed_engine != "llama.cpp":
        raise ValueError("--speed-quant is the GGUF type timed in llama.cpp: add --speed-engine llama.cpp")
    if args.speed_engine == "llama.cpp":
        from ..shrink.latency import check_engine

        check_engine("llama.cpp", args.speed_quant)  # built, and the type known: before anything loads
    from ..shrink.search import resolve_width_multiple

    args.width_multiple_ = resolve_width_multiple(args.width_multiple, [args.speed_quant], "--width-multiple")
    axes = [a.strip() for a in args.axes.split(",") if a.strip()] if args.axes is not None else None
    if args.search == "per-layer":
        args.axes_ = check_per_layer_axes(axes if axes is not None else DEFAULT_PER_LAYER_AXES)
    else:
        args.axes_ = check_axes(axes if axes is not None else ["heads", "neurons", "hidden", "depth"])
        if args.optimizer != "milp":
            raise ValueError("--optimizer applies to --search per-layer")
    for name in ("nsamples", "seqlen", "eval_windows", "candidates", "kd_batch", "kd_seqlen", "checkpoint_every",
                 "score_windows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0 or args.kd_steps < 0:
        raise ValueError(f"--seed and --kd-steps must be 0 or more, got {args.seed} and {args.kd_steps}")
    if args.lora_rank is not None and args.lora_rank < 1:
        raise ValueError(f"--lora-rank must be a positive integer, got {args.lora_rank}")
    for name in ("kd_ce_weight", "kd_hidden_weight"):
        if getattr(args, name) is not None and not getattr(args, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if adapt:
        from ..pipeline.shrink import adapt_config

        args.adapt_ = adapt_config(_shrink_fields(args), args.axes_)
        if args.kd_steps < args.adapt_.rounds:
            raise ValueError(f"--schedule adapt trains after each of its {args.adapt_.rounds} cuts: --kd-steps "
                             f"({args.kd_steps}) must be at least --rounds ({args.adapt_.rounds}), one step per round")
        given = [n for n, v in (("--checkpoint", args.checkpoint), ("--resume", args.resume or None)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} applies to --schedule one-shot's distillation; adapt's rounds "
                             "train without checkpoints")
    if args.kd_steps == 0:
        given = [f"--{n}" for n, v in (("kd-text", args.kd_text), ("checkpoint", args.checkpoint),
                                       ("resume", args.resume or None), ("recover", args.recover),
                                       ("lora-rank", args.lora_rank), ("kd-ce-weight", args.kd_ce_weight),
                                       ("kd-hidden-weight", args.kd_hidden_weight),
                                       ("kd-precision", args.kd_precision)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} applies to distillation, which --kd-steps 0 turns off; pass "
                             "--kd-steps N")
    if args.resume and args.checkpoint is None:
        raise ValueError("--resume continues from a checkpoint: pass --checkpoint DIR")
    if args.lora_rank is not None and args.recover != "lora":
        raise ValueError("--lora-rank is the rank of --recover lora's adapters; add --recover lora or drop --lora-rank")
    if args.recover == "lora" and args.checkpoint is not None:
        raise ValueError("--recover lora trains adapters that checkpoints do not hold; drop --checkpoint (and "
                         "--resume) or use --recover kd")
    args.recovery_ = _recovery_fields(args)
    args.kd = DistillConfig.parse(steps=max(1, args.kd_steps), batch_size=args.kd_batch, seqlen=args.kd_seqlen,
                                  lr=args.kd_lr, checkpoint_every=args.checkpoint_every, seed=args.seed,
                                  **args.recovery_, where="--kd")
    if args.kd_steps:
        from ..pipeline.shrink import check_recovery

        check_recovery(args.kd, args.axes_, CLI_NAMES)
    if args.checkpoint is not None and args.out is not None and Path(args.checkpoint).resolve() == Path(args.out).resolve():
        raise ValueError("--checkpoint and --out must be different folders")
    args.stage_ = stage_config(args)


def _recovery_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The DistillConfig fields the recovery options set (only those given: the defaults are DistillConfig's)."""
    fields: dict[str, Any] = dict(RECOVERIES[args.recover]) if args.recover is not None else {}
    for name, value in (("lora_rank", args.lora_rank), ("ce_weight", args.kd_ce_weight),
                        ("hidden_weight", args.kd_hidden_weight), ("precision", args.kd_precision)):
        if value is not None:
            fields[name] = value
    return fields


def _shrink_fields(args: argparse.Namespace, distill: dict[str, Any] | None = None) -> Any:
    from ..pipeline.shrink import ShrinkConfig

    return ShrinkConfig.parse(target=str(args.target_), search=args.search, axes=list(args.axes_),
                              importance=args.importance, candidates=args.candidates, optimizer=args.optimizer,
                              score_windows=args.score_windows, speed_engine=args.speed_engine,
                              speed_quant=args.speed_quant, width_multiple=args.width_multiple, distill=distill,
                              schedule=args.schedule,
                              rounds=args.rounds, where="prunekit shrink")


def stage_config(args: argparse.Namespace) -> Any:
    """The recipe stage (:class:`prunekit.pipeline.ShrinkConfig`) that does what these options do to the model
    (after a calibrate stage of ``--calib``, ``--nsamples``, ``--seqlen``, ``--seed``): the same shrink (or
    Adapt-Pruner's schedule) and, with ``--kd-steps``, the same recovery."""
    distill = None
    if args.kd_steps:
        distill = {"steps": args.kd_steps, "batch_size": args.kd_batch, "seqlen": args.kd_seqlen, "lr": args.kd_lr,
                   "seed": args.seed, "text": args.kd_text or args.calib, **args.recovery_}
    return _shrink_fields(args, distill)


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(f"shrunk-{Path(str(args.model)).stem.lower()}")


def run(args: argparse.Namespace) -> int:
    """Check everything, then shrink, distil, save into a fresh folder, read it back and compare, and swap it
    in as ``--out``."""
    from ..infra.atomic import output_folder

    _check_args(args)
    out = _out_dir(args)
    started = time.perf_counter()
    with output_folder(out, overwrite=args.overwrite) as folder:
        meta, text = shrink_and_save(args, folder)
    meta["out"] = str(out)
    meta["total_seconds"] = time.perf_counter() - started
    reader = meta["read_back_with"]
    emit(args, meta, f"{text}\nsaved to {out}/ ({args.dtype}; read back with {reader}, logits checked) in "
                     f"{meta['total_seconds']:.0f} s total")
    return 0
