"""The work of ``prunekit shrink`` once its options are checked (:mod:`prunekit.cli.shrink`): load, shrink, cut
the vocabulary, distil, time, save into the output folder, read it back and compare, and the report's text."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from .common import is_quiet, say

RELOAD_ATOL = 1e-4  # float32 logits of the same weights through the same kernels: differences are ~0

def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this command."""
    return {"model": str(args.model), "target": str(args.target_), "search": args.search, "axes": list(args.axes_),
            "optimizer": args.optimizer, "score_windows": args.score_windows,
            "importance": args.importance, "candidates": args.candidates, "calib": args.calib,
            "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
            "kd": args.kd.to_dict(), "kd_text": args.kd_text or args.calib, "vocab": args.vocab,
            # (only when not the default, so a checkpoint written before the option existed still resumes)
            **({"width_multiple": args.width_multiple_} if args.width_multiple_ != 32 else {}),
            # the vocabulary is cut before the distillation (a checkpoint of a run that cut it after is refused)
            **({"vocab_cut": "before distillation"} if args.vocab is not None and args.schedule == "one-shot"
               else {})}


def shrink_and_save(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], str]:
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
        student = load_student(args.checkpoint)  # in the cut vocabulary already, when --vocab cut it before
        meta.update(shrink=extra.get("shrink"), perplexity=dict(extra.get("perplexity") or {}),
                    **({"vocab": extra["vocab"]} if "vocab" in extra else {}))
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
    teacher, tokenizer, scored = dense, lm.tokenizer, windows
    if vocab_plan is not None:
        from ..shrink.vocab import trim_vocab_

        tokenizer = vocab_plan.tokenizer
        scored = eval_windows(tokenizer, args.calib, args.eval_windows, args.seqlen, say=quiet)
        if args.schedule == "one-shot":  # cut before the distillation: the LM head and both softmaxes shrink
            if not args.resume:
                shrink_text += "\n" + _cut_vocab(student, lm.tokenizer, vocab_plan, meta, scored, progress)
            if teaches:  # the teacher in the same ids; the full dense model stays for the paired timing
                teacher = copy.deepcopy(dense) if not args.no_time else dense
                trim_vocab_(teacher, lm.tokenizer, plan=vocab_plan)
            if stream is not None:
                stream = text_stream(tokenizer, args.kd_text or args.calib, args.kd_seqlen, args.seed)
    if args.kd_steps and args.schedule == "one-shot":
        say(args, f"{describe_recovery(args.kd)}: {args.kd.steps} steps × {args.kd_batch} × {args.kd_seqlen} "
                  "tokens ...")
        extra = {"shrink": meta["shrink"], "perplexity": meta["perplexity"], "shrink_text": shrink_text,
                 **({"vocab": meta["vocab"]} if "vocab" in meta else {})}
        kd = distill_(student, teacher if teaches else None, stream, args.kd, checkpoint=args.checkpoint,
                      resume=args.resume, run=run_id, progress=progress, extra=extra)
        meta["distill"] = kd.to_dict()
        meta["perplexity"]["distilled"] = perplexity(student, scored, progress=progress)
    teacher = None  # a cut copy of the teacher is freed before the timing and the save
    if vocab_plan is not None and args.schedule != "one-shot":  # Adapt-Pruner's rounds score in the source ids
        shrink_text += "\n" + _cut_vocab(student, lm.tokenizer, vocab_plan, meta, scored, progress)
    check_ids = scored[:2, :64]
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
        meta["perplexity"]["saved_bf16"] = perplexity(student, scored, progress=progress)
    meta["perplexity_text"] = {"source": args.calib, "windows": args.eval_windows, "seqlen": args.seqlen}
    text = _render(args, meta, shrink_text)
    (folder / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if vocab_plan is not None:  # the source ids kept, for a GGUF export that cuts the source's tokenizer alike
        from ..export.gguf_vocab import KEPT_FILE

        (folder / KEPT_FILE).write_text(json.dumps({"kept": vocab_plan.kept.tolist()}) + "\n")
    (folder / "report.txt").write_text(text + "\n")
    return meta, text


def _cut_vocab(student: Any, tokenizer: Any, plan: Any, meta: dict[str, Any], scored: Any, progress: bool) -> str:
    """Cut ``student``'s vocabulary to ``plan`` in place, with its report and its perplexity in the cut
    tokenizer's ids of the held-out text (``scored``) in ``meta``; the report's text."""
    from ..metrics.perplexity import perplexity
    from ..shrink.vocab import trim_vocab_

    vocab = trim_vocab_(student, tokenizer, plan=plan)
    meta["vocab"] = vocab.to_dict()
    meta["perplexity"]["vocab"] = perplexity(student, scored, progress=progress)
    return str(vocab)


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
                 + (" (from vocab on: in the cut tokenizer's tokens of the same text)" if "vocab" in ppl else ""))
    if "generation" in meta:
        g = meta["generation"]
        lines.append(f"generation ({g['dense']['tokens']} tokens, 1 thread, interleaved): dense "
                     f"{g['dense']['tokens_per_s']:.1f} tok/s, shrunk {g['shrunk']['tokens_per_s']:.1f} tok/s "
                     f"({g['speedup']:.2f}×)" + (" — noisy" if g["dense"]["noisy"] or g["shrunk"]["noisy"] else ""))
    return "\n".join(lines)
