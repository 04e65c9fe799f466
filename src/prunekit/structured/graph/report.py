"""What a structured-pruning call did: sizes before and after, how much of the model could be cut, and
what held the rest (the reasons channels stayed pinned)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ...metrics.macs import count_macs  # noqa: F401  (the one MAC counter; structured re-exports it)
from .depgraph import DependencyGraph

INTERFACE = ("model output", "ignore=")  # pins that the model's interface asks for, not limits of the graph


class StructuredPruningWarning(UserWarning):
    """Structured pruning removed much less (or more) than asked, or met operations it could not follow."""


def count_params(model: nn.Module) -> int:
    """Parameters, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass
class StructuredReport:
    """The result of ``structured.prune_``: ``str(report)`` reads as a summary, ``to_dict()`` is data."""

    what: str
    sparsity: float
    importance: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels: int = 0
    channels_prunable: int = 0
    channels_removed: int = 0
    groups: int = 0
    pinned: list[tuple[str, int]] = field(default_factory=list)
    repaired: list[tuple[str, str]] = field(default_factory=list)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    config_changes: dict[str, Any] = field(default_factory=dict)
    reloadable: bool | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_removed(self) -> float:
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_removed(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def prunable_fraction(self) -> float:
        """The share of the model's channels that the graph could cut (interface channels aside)."""
        return self.channels_prunable / self.channels if self.channels else 0.0

    @property
    def channels_removed_fraction(self) -> float:
        return self.channels_removed / self.channels if self.channels else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(macs_removed=self.macs_removed, params_removed=self.params_removed,
                 prunable_fraction=self.prunable_fraction, channels_removed_fraction=self.channels_removed_fraction)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def __str__(self) -> str:
        lines = [
            f"structured pruning ({self.what}, sparsity {self.sparsity:g}, {self.importance}): "
            f"params {self.params_before:,} -> {self.params_after:,} (-{self.params_removed:.1%}), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} (-{self.macs_removed:.1%}), {self.seconds:.2f} s",
        ]
        if self.channels:
            lines.append(f"channels: {self.prunable_fraction:.1%} of {self.channels:,} prunable in {self.groups} "
                         f"groups, {self.channels_removed:,} removed ({self.channels_removed_fraction:.1%})")
        for why, n in self.pinned[:6]:
            lines.append(f"  pinned {n:,}: {why}")
        for group, why in self.repaired[:6]:
            lines.append(f"  kept after the check: {group} ({why})")
        if len(self.repaired) > 6:
            lines.append(f"  … and {len(self.repaired) - 6} more groups kept after the check")
        if self.config_changes:
            lines.append("config: " + ", ".join(f"{k}={v}" for k, v in self.config_changes.items())
                         + ("" if self.reloadable is None else
                            f" (reloads with from_pretrained: {'yes' if self.reloadable else 'no'})"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def channel_counts(graph: DependencyGraph, removed: set[int], extra_pinned: set[int] = frozenset()
                   ) -> tuple[int, int, int, list[tuple[str, int]]]:
    """(channels, prunable, removed, pin reasons with counts) over the output channels weights produce;
    channels the interface fixes (model outputs, ``ignore=``) are left out."""
    pinned = graph.pinned_roots()
    reasons: Counter[str] = Counter()
    total = prunable = gone = 0
    for key, slots in graph.produced.items():
        for r in graph.roots(slots).tolist():
            why = pinned.get(r)
            if why is not None and why.startswith(INTERFACE):
                continue
            total += 1
            if why is not None:
                reasons[why] += 1
            elif r in extra_pinned:
                reasons["kept after the pruned copy failed the check"] += 1
            else:
                prunable += 1
                gone += r in removed
    return total, prunable, gone, reasons.most_common()
