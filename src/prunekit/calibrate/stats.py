"""Hooks that collect what post-training methods need from a layer's inputs, over calibration tokens:
per-column squared norms ‖X_j‖² (Wanda) and the Gram matrix X·Xᵀ (SparseGPT's Hessian).

Layers that read the very same input tensor (a block's q/k/v projections, the MLP's gate and up)
share one accumulator, so each distinct input is summed once.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn


class InputStats:
    """Accumulates statistics of the inputs of ``modules`` while hooks are attached (use as a context manager)."""

    def __init__(self, modules: Mapping[str, nn.Module], hessian: bool = False) -> None:
        self.modules = dict(modules)
        self.hessian = hessian
        self.sq_norms: dict[str, Tensor] = {}
        self.grams: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.owner: dict[str, str] = {}  # module name → the module whose accumulator it shares
        self._seen: list[tuple[Tensor, str]] = []
        self._handles: list = []

    def __enter__(self) -> "InputStats":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def new_call(self) -> None:
        """Mark the start of a block call: inputs seen before cannot be shared with the next ones."""
        self._seen.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in self.owner:
                same = next((n for t, n in self._seen if t is x), None)
                self.owner[name] = same or name
            self._seen.append((x, name))
            if self.owner[name] != name:
                return
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            sq = flat.square().sum(0)
            if name in self.sq_norms:
                self.sq_norms[name] += sq
                self.tokens[name] += flat.shape[0]
            else:
                self.sq_norms[name] = sq
                self.tokens[name] = flat.shape[0]
            if self.hessian:
                if name in self.grams:
                    self.grams[name].addmm_(flat.t(), flat)
                else:
                    self.grams[name] = flat.t() @ flat
        return hook

    def col_norms(self, name: str) -> Tensor:
        """‖X_j‖₂ for every input column j of module ``name`` (over all calibration tokens)."""
        return self.sq_norms[self.owner[name]].sqrt()

    def gram(self, name: str) -> Tensor:
        """X·Xᵀ summed over calibration tokens (in × in) for module ``name``."""
        return self.grams[self.owner[name]]

    def n_tokens(self, name: str) -> int:
        """How many tokens module ``name``'s statistics were collected over."""
        return self.tokens[self.owner[name]]
