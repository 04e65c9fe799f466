"""One entry point for the CLI: ``prune_transformer_(model, what="heads"|"neurons"|"layers", ratio=…)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import block_list, prune_layers_
from .transformers import prune_heads_, prune_neurons_

WHATS = ("heads", "neurons", "layers")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prune_transformer_(model: nn.Module, what: str = "heads", ratio: float = 0.25, calibration: Any = None,
                       importance: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Shrink a Hugging Face transformer in place: remove ``ratio`` of its attention heads (whole GQA
    groups), of its MLP neurons, or of its blocks (``layers``: ShortGPT Block Influence on
    ``calibration``, which is then required). Heads and neurons are ranked by ``importance``: by
    default ``activation`` when ``calibration`` is given, else ``l2``. Returns a report: what was
    removed, and the parameter counts and config sizes before and after."""
    if what not in WHATS:
        raise ValueError(f"what must be one of {', '.join(WHATS)}, got {what!r}")
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if what == "layers" and calibration is None:
        raise ValueError("what='layers' ranks blocks on data: pass calibration= (a batch of token ids or inputs)")
    if importance is None:
        importance = "activation" if calibration is not None else "l2"
    before = _params(model)
    report: dict[str, Any] = {"what": what, "ratio": ratio, "params_before": before,
                              "importance": importance if what != "layers" else "block_influence"}
    if what == "heads":
        report.update(prune_heads_(model, ratio, importance, calibration=calibration))
    elif what == "neurons":
        report["intermediate_size"] = prune_neurons_(model, ratio, importance, calibration=calibration)
    else:
        _, blocks = block_list(model)
        n = min(len(blocks) - 1, round(ratio * len(blocks)))
        report["removed_blocks"] = prune_layers_(model, calibration, n=n, unit="block", progress=progress)
        report["num_hidden_layers"] = len(block_list(model)[1])
    report["params_after"] = _params(model)
    return report
