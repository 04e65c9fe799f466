"""The ``--experts`` flags of ``prunekit prune``: remove (or merge) a fraction of every MoE layer's experts.

    prunekit prune --model ./qwen3-moe-folder --experts 0.5 --expert-score reap --out fewer-experts/
"""

from __future__ import annotations

import argparse


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

