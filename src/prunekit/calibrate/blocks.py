"""Finding a transformer's blocks without knowing its family.

A model's blocks are an ``nn.ModuleList`` of modules of one class. Hugging Face models name that class
in ``_no_split_modules`` (the unit ``accelerate`` keeps on one device), so lists of such modules are
preferred; any model — a custom one too — also works through the fallback: the largest top-level
``ModuleList`` of identical, parameter-holding modules. Lists nested inside another list's entries
(the experts of an older MoE block) are never the blocks.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class Blocks(NamedTuple):
    """A model's transformer blocks: the dotted name of their ModuleList and the list itself
    (``name, blocks = find_blocks(model)`` unpacks it)."""

    name: str
    modules: nn.ModuleList

    def block_name(self, i: int) -> str:
        """The dotted name of block ``i`` (``model.layers.3``)."""
        return f"{self.name}.{i}" if self.name else str(i)

    def contains(self, module_name: str) -> bool:
        """Whether the module called ``module_name`` lies inside one of the blocks."""
        prefix = self.name + "." if self.name else ""
        rest = module_name[len(prefix):] if module_name.startswith(prefix) else None
        return rest is not None and rest.split(".", 1)[0].isdigit()


def _no_split_classes(model: nn.Module) -> set[str]:
    names = getattr(model, "_no_split_modules", None) or []
    return {n for n in names if isinstance(n, str)}


def _candidates(model: nn.Module, preferred: set[str]) -> list[tuple[str, nn.ModuleList]]:
    """Top-level ModuleLists of parameter-holding modules of one class (or all of ``preferred`` classes,
    as hybrid models mix attention and recurrent blocks)."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        classes = {type(b) for b in m}
        if len(classes) != 1 and not all(c.__name__ in preferred for c in classes):
            continue
        if not any(True for _ in m[0].parameters()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # inside an entry of a list already found (experts inside a block)
        found.append((name, m))
    return found


def _size(blocks: nn.ModuleList) -> int:
    return sum(p.numel() for p in blocks.parameters())


def find_blocks(model: nn.Module) -> Blocks:
    """The model's transformer blocks: a ModuleList of its ``_no_split_modules`` class if it has one
    (the one with the most parameters), else the largest ModuleList of identical modules.

    Raises a ValueError naming what was looked for when there is none.
    """
    preferred = _no_split_classes(model)
    candidates = _candidates(model, preferred)
    named = [(n, m) for n, m in candidates if type(m[0]).__name__ in preferred]
    pool = named or candidates
    if not pool:
        wanted = f"of its _no_split_modules ({', '.join(sorted(preferred))}) or " if preferred else ""
        raise ValueError(
            f"found no transformer blocks in {type(model).__name__}: looked for an nn.ModuleList {wanted}of "
            "identical modules holding parameters, and found none. The block-by-block engine needs the blocks in "
            "an nn.ModuleList (as Hugging Face models keep them); use method='magnitude', which needs no blocks"
        )
    name, blocks = max(pool, key=lambda c: (_size(c[1]), len(c[1])))
    return Blocks(name, blocks)
