"""The ``--experts`` flags of ``prunekit prune``: remove (or merge) a fraction of every MoE layer's experts.

    prunekit prune --model ./qwen3-moe-folder --experts 0.5 --expert-score reap --out fewer-experts/
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_expert_args(p: argparse.ArgumentParser) -> None:
    """Add ``--experts``, ``--expert-score``, ``--merge-experts`` and ``--renormalize`` to ``prunekit prune``."""
    from ..experts.config import EXPERT_SCORE_NAMES

    p.add_argument("--experts", type=float, default=None, metavar="SPARSITY",
                   help="MoE models: remove this fraction of every MoE layer's routed experts (router rows and "
                        "weights; the config's expert count follows) instead of masking weights")
    p.add_argument("--expert-score", default=None, choices=list(EXPERT_SCORE_NAMES),
                   help="with --experts: how experts are ranked on the calibration tokens (default reap)")
    p.add_argument("--merge-experts", action="store_true",
                   help="with --experts: merge experts into the most used ones (M-SMoE) instead of removing them")
    p.add_argument("--renormalize", action="store_true",
                   help="with --experts: make the router renormalise its top-k weights afterwards (norm_topk_prob)")


def check_expert_args(args: argparse.Namespace) -> bool:
    """Check the expert flags; True when ``--experts`` was given (then the weight-masking flags are unused)."""
    from ..core.fraction import check_fraction

    if args.experts is None:
        if args.merge_experts or args.renormalize or args.expert_score is not None:
            raise ValueError("--expert-score, --merge-experts and --renormalize go with --experts SPARSITY")
        return False
    check_fraction(args.experts, "--experts", "[0, 1)", hint="the fraction of each MoE layer's experts removed")
    if getattr(args, "structured", None) is not None:
        raise ValueError("--experts and --structured are two different prunings; pick one")
    given = [f"--{n}" for n in ("method", "sparsity", "pattern", "allocation") if getattr(args, n, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to weight pruning (masks) and "
                         "would be ignored with --experts, which removes whole experts; say how many with --experts")
    if args.merge_experts and args.expert_score is not None:
        raise ValueError("--expert-score does not apply with --merge-experts (merging groups experts by routing "
                         "frequency and router similarity); drop one")
    args.expert_score = args.expert_score or "reap"
    return True


def plan(args: argparse.Namespace, model: Any) -> None:
    """Every check of the expert pruning (MoE layers found, enough experts left for top-k and groups)."""
    from ..experts import plan_experts

    plan_experts(model, args.experts, renormalize=args.renormalize)


def run_experts(args: argparse.Namespace, model: Any, calibration: Any, progress: bool) -> tuple[str, dict[str, Any]]:
    """Prune or merge the experts; returns the headline and the fields for ``prunekit.json``."""
    from ..experts import merge_experts_, prune_experts_

    t0 = time.perf_counter()
    if args.merge_experts:
        report = merge_experts_(model, args.experts, calibration=calibration, renormalize=args.renormalize,
                                device=args.device, progress=progress)
        settings = {"sparsity": args.experts, "renormalize": args.renormalize, "align": True}
    else:
        report = prune_experts_(model, args.experts, score=args.expert_score, calibration=calibration,
                                renormalize=args.renormalize, device=args.device, progress=progress)
        settings = {"sparsity": args.experts, "score": args.expert_score, "renormalize": args.renormalize}
    meta = {"method": report.method, "settings": settings, "experts": report.to_dict(),
            "prune_seconds": time.perf_counter() - t0}
    return str(report).splitlines()[0], meta
