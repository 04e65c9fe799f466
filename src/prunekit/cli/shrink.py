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
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from .common import add_common, emit, is_quiet, say

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
RELOAD_ATOL = 1e-4  # float32 logits of the same weights through the same kernels: differences are ~0


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
                        "and other text with more, smaller pieces (prunekit.shrink.vocab)")
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
        meta, text = _shrink_and_save(args, folder)
    meta["out"] = str(out)
    meta["total_seconds"] = time.perf_counter() - started
    reader = meta["read_back_with"]
    emit(args, meta, f"{text}\nsaved to {out}/ ({args.dtype}; read back with {reader}, logits checked) in "
                     f"{meta['total_seconds']:.0f} s total")
    return 0


def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this command."""
    return {"model": str(args.model), "target": str(args.target_), "search": args.search, "axes": list(args.axes_),
            "optimizer": args.optimizer, "score_windows": args.score_windows,
            "importance": args.importance, "candidates": args.candidates, "calib": args.calib,
            "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
            "kd": args.kd.to_dict(), "kd_text": args.kd_text or args.calib, "vocab": args.vocab,
            # (only when not the default, so a checkpoint written before the option existed still resumes)
            **({"width_multiple": args.width_multiple_} if args.width_multiple_ != 32 else {})}


def _shrink_and_save(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], str]:
    from .. import __version__
    from ..datasets.text import calibration_windows, eval_windows
    from ..metrics.perplexity import perplexity
    from ..models.hf import load_model
    from ..models.shrunk import stored_layer_shapes
    from ..pipeline.shrink import describe_recovery
    from ..shrink import plan_shrink, shrink_, shrink_layers_
    from ..shrink.api import check_calibration
    from ..shrink.search_layers import check_layers
    from ..shrink.distill import distill_, load_student, read_checkpoint, text_stream

    progress = not is_quiet(args)
    quiet = lambda t: say(args, t)  # noqa: E731
    say(args, f"loading {args.model} ...")
    lm = load_model(args.model)
    if not lm.causal_lm:
        raise ValueError(f"{args.model} is not a causal language model; prunekit shrink cuts decoders")
    calib = calibration_windows(lm.tokenizer, args.calib, args.nsamples, args.seqlen, args.seed, say=quiet)
    windows = eval_windows(lm.tokenizer, args.calib, args.eval_windows, args.seqlen, say=quiet)
    vocab_plan = None
    if args.vocab is not None:  # planned (and its tokenizer checked on the text) before anything changes
        from ..shrink.vocab import config_token_ids, corpus_texts, plan_vocab

        say(args, f"planning the vocabulary of {args.vocab} ...")
        vocab_plan = plan_vocab(lm.tokenizer, corpus_texts(args.vocab), keep_ids=config_token_ids(lm.model.config))
    stream = None
    if args.kd_steps:  # the recovery's text is there and holds a window, before anything changes
        stream = text_stream(lm.tokenizer, args.kd_text or args.calib, args.kd_seqlen, args.seed)
        next(iter(stream))
    run_id = _run_identity(args)
    meta: dict[str, Any] = {"prunekit_version": __version__, "command": "shrink", "model": str(args.model),
                            "run": run_id, "schedule": args.schedule}
    if args.search == "uniform":
        _, _, _, _, found = plan_shrink(lm.model, args.target_, calib, args.axes_, args.importance,  # every check
                                        width_multiple=args.width_multiple_)
        meta["candidates_in_band"] = len(found.shapes)
    else:  # every check, and for speed= the latency table, before the dense model is measured
        check_calibration(lm.model, calib)
        if args.target_.kind == "speed":
            say(args, "timing the dense model and each block width " + (
                "in llama.cpp (GGUF files, llama-bench, 1 thread) ..." if args.speed_engine == "llama.cpp" else
                "(1 thread, CPU time) ..."))
        layer_budget = check_layers(lm.model, args.target_, args.axes_, optimizer=args.optimizer,
                                    speed_engine=args.speed_engine, speed_quant=args.speed_quant,
                                    width_multiple=args.width_multiple_)
    dense = lm.model  # the unpruned model: the teacher, and the dense side of the paired timing
    teaches = args.kd_steps and args.kd.needs_teacher
    if args.resume:
        ckpt = read_checkpoint(args.checkpoint)
        if ckpt.get("run") != run_id:
            raise ValueError(f"the checkpoint in {args.checkpoint} was written by a different command ({ckpt.get('run')}"
                             "); resume with the same options")
        extra = ckpt.get("extra") or {}
        say(args, f"resuming the distillation after step {ckpt['step']} from {args.checkpoint} ...")
        student = load_student(args.checkpoint)
        meta.update(shrink=extra.get("shrink"), perplexity=dict(extra.get("perplexity") or {}))
        shrink_text = extra.get("shrink_text", "")
    else:
        say(args, "measuring the dense model ...")
        ppl = {"dense": perplexity(lm.model, windows, progress=progress)}
        # the unpruned model stays for the teacher and the paired timing; else it is cut in place
        keep_dense = teaches or not args.no_time
        student = copy.deepcopy(lm.model) if keep_dense else lm.model
        if args.schedule == "adapt":  # cut and recovery in rounds: no shrunk-only model to measure
            from ..shrink.schedule import adapt_shrink_

            say(args, f"shrinking to {args.target_} along {', '.join(args.axes_)} in {args.adapt_.rounds} rounds "
                      f"(Adapt-Pruner), {describe_recovery(args.kd)} after each: {args.kd.steps} steps in all × "
                      f"{args.kd_batch} × {args.kd_seqlen} tokens ...")
            report = adapt_shrink_(student, dense if teaches else None, str(args.target_), calib, stream, args.adapt_,
                                   args.kd, progress=progress)
            ppl["distilled"] = perplexity(student, windows, progress=progress)
            meta.update(shrink=report.to_dict(), distill=report.distill(), perplexity=ppl)
        else:
            say(args, f"shrinking to {args.target_} along {', '.join(args.axes_)} ...")
            if args.search == "uniform":
                report = shrink_(student, args.target_, calib, args.axes_, importance=args.importance,
                                 candidates=args.candidates, progress=progress, width_multiple=args.width_multiple_)
            else:
                report = shrink_layers_(student, args.target_, calib, args.axes_, optimizer=args.optimizer,
                                        latency=layer_budget.latency, score_on=calib[:args.score_windows],
                                        progress=progress, width_multiple=args.width_multiple_)
            ppl["shrunk"] = perplexity(student, windows, progress=progress)
            meta.update(shrink=report.to_dict(), perplexity=ppl)
        shrink_text = str(report)
    if args.kd_steps and args.schedule == "one-shot":
        say(args, f"{describe_recovery(args.kd)}: {args.kd.steps} steps × {args.kd_batch} × {args.kd_seqlen} "
                  "tokens ...")
        extra = {"shrink": meta["shrink"], "perplexity": meta["perplexity"], "shrink_text": shrink_text}
        kd = distill_(student, dense if teaches else None, stream, args.kd, checkpoint=args.checkpoint,
                      resume=args.resume, run=run_id, progress=progress, extra=extra)
        meta["distill"] = kd.to_dict()
        meta["perplexity"]["distilled"] = perplexity(student, windows, progress=progress)
    tokenizer, check_ids = lm.tokenizer, windows[:2, :64]
    if vocab_plan is not None:
        from ..shrink.vocab import trim_vocab_

        vocab = trim_vocab_(student, lm.tokenizer, plan=vocab_plan)
        tokenizer = vocab.tokenizer
        meta["vocab"] = vocab.to_dict()
        vwindows = eval_windows(tokenizer, args.calib, args.eval_windows, args.seqlen, say=quiet)
        meta["perplexity"]["vocab"] = perplexity(student, vwindows, progress=progress)
        check_ids = vwindows[:2, :64]
        shrink_text += f"\n{vocab}"
    if not args.no_time:
        from ..metrics.generation import compare_generation

        say(args, "timing generation, dense and shrunk interleaved ...")
        speeds, cmp = compare_generation({"dense": dense, "shrunk": student},
                                         {"dense": lm.tokenizer, "shrunk": tokenizer}, threads=1)
        meta["generation"] = {n: s.to_dict() for n, s in speeds.items()}
        meta["generation"]["speedup"] = speeds["dense"].seconds / speeds["shrunk"].seconds
    if args.dtype == "bf16":
        import torch

        # the parameters only: buffers such as the rotary frequencies stay float32, as from_pretrained(dtype=
        # bfloat16) builds them, so the model in memory is the one a user reads back
        for p in student.parameters():
            p.data = p.data.to(torch.bfloat16)
        student.config.dtype = torch.bfloat16
    say(args, f"saving to {folder} ({args.dtype}) and reading it back ...")
    meta["dtype"] = args.dtype
    meta["reload_max_abs_diff"] = save_and_verify(student, tokenizer, folder, check_ids)
    meta["read_back_with"] = "from_pretrained" if stored_layer_shapes(student.config) is None else \
        "prunekit.shrink.load_shrunk"
    if args.dtype == "bf16":
        meta["perplexity"]["saved_bf16"] = perplexity(student, vwindows if vocab_plan is not None else windows,
                                                      progress=progress)
    meta["perplexity_text"] = {"source": args.calib, "windows": args.eval_windows, "seqlen": args.seqlen}
    text = _render(args, meta, shrink_text)
    (folder / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if vocab_plan is not None:  # the source ids kept, for a GGUF export that cuts the source's tokenizer alike
        from ..export.gguf_vocab import KEPT_FILE

        (folder / KEPT_FILE).write_text(json.dumps({"kept": vocab_plan.kept.tolist()}) + "\n")
    (folder / "report.txt").write_text(text + "\n")
    return meta, text


def save_and_verify(model: Any, tokenizer: Any, folder: Path, ids: Any) -> float:
    """Save ``model`` and ``tokenizer`` into ``folder``, read the model back (stock ``from_pretrained`` for a uniform
    shape, :func:`prunekit.shrink.load_shrunk` for per-layer shapes) and compare its logits on ``ids`` with the
    in-memory model's; returns the largest difference, raises if it is above :data:`RELOAD_ATOL` (the caller's
    output folder is then discarded). Both run at the model's dtype through the same kernels."""
    import torch

    from ..shrink.perlayer import load_shrunk

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    back = load_shrunk(folder, dtype=next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        a = model(input_ids=ids, use_cache=False).logits.float()
        b = back(input_ids=ids, use_cache=False).logits.float()
    model.train(was_training)
    diff = float((a - b).abs().max())
    if not diff <= RELOAD_ATOL:
        raise RuntimeError(f"the saved folder does not reproduce the shrunk model (logits differ by up to {diff:.3g}); "
                           "nothing was written to --out. Please report this")
    return diff


def _render(args: argparse.Namespace, meta: dict[str, Any], shrink_text: str) -> str:
    ppl = meta.get("perplexity") or {}
    lines = [f"prunekit {meta['prunekit_version']}: {args.model}", shrink_text]
    if "distill" in meta:
        d = meta["distill"]
        how = {"kd": "distillation", "next-token": "next-token fine-tuning", "lora": "LoRA distillation"}
        rounds = f" over {d['rounds']} rounds" if d.get("rounds") else ""
        lines.append(f"{how[args.recover or 'kd']}{rounds}: {d['steps']} steps, {d['tokens']:,} tokens, "
                     f"{d['seconds']:.0f} s wall ({d['cpu_seconds']:.0f} s CPU), {d['tokens_per_s']:,.0f} tokens/s, "
                     f"peak memory {d['peak_rss_bytes'] / 2**30:.2f} GiB"
                     + (f", resumed after step {d['resumed_from']}" if d["resumed_from"] else ""))
    pp = ", ".join(f"{k} {v:.2f}" for k, v in ppl.items())
    lines.append(f"perplexity ({args.calib} held out, {args.eval_windows}×{args.seqlen}): {pp}"
                 + (" (vocab: over the trimmed tokenizer's tokens of the same text)" if "vocab" in ppl else ""))
    if "generation" in meta:
        g = meta["generation"]
        lines.append(f"generation ({g['dense']['tokens']} tokens, 1 thread, interleaved): dense "
                     f"{g['dense']['tokens_per_s']:.1f} tok/s, shrunk {g['shrunk']['tokens_per_s']:.1f} tok/s "
                     f"({g['speedup']:.2f}×)" + (" — noisy" if g["dense"]["noisy"] or g["shrunk"]["noisy"] else ""))
    return "\n".join(lines)
