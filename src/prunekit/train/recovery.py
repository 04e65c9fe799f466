"""Recovery after pruning: fine-tuning with the masks fixed, logit knowledge distillation from the
dense model (Hinton et al., 2015), and parameter-efficient retraining — only biases and norms, or LoRA
adapters too — as PERP does (Zimmer et al., "PERP: Rethinking the Prune-Retrain Paradigm in the Era of
LLMs", 2023). LoRA updates are masked, so merging them keeps the model exactly as sparse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..infra.calling import call_model, output_tensor
from ..core.mask import Mask, get_mask, weight_of
from ..core.scope import select_targets
from .loop import fit

MODES = ("full", "bias_norm", "lora")


@dataclass
class RecoveryReport:
    """What :func:`recover_` trained: the mode, trained and total parameter counts, and the losses."""

    mode: str
    trained_params: int
    total_params: int
    losses: list[float] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        """Share of the model's parameters that were trained."""
        return self.trained_params / self.total_params

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (losses summarized by the last one)."""
        return {"mode": self.mode, "trained_params": self.trained_params, "total_params": self.total_params,
                "trained_fraction": self.trained_fraction, "final_loss": self.losses[-1] if self.losses else None}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float = 2.0,
            weight: float = 0.5) -> Tensor:
    """Logit distillation (Hinton et al. 2015): ``weight`` · T² · KL(teacher_T ‖ student_T) + (1 − ``weight``) · CE."""
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, -1),
                                nn.functional.log_softmax(teacher_logits / t, -1), log_target=True,
                                reduction="batchmean") * t * t
    return weight * soft + (1 - weight) * nn.functional.cross_entropy(student_logits, labels)


class LoRA(nn.Module):
    """A low-rank update ``B @ A`` added to a weight under its mask, so the sum stays as sparse."""

    def __init__(self, shape: tuple[int, ...], rank: int, mask: Tensor | None, alpha: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        out_f, in_f = shape[0], int(torch.tensor(shape[1:]).prod())
        self.shape = shape
        # A is drawn from ``generator`` (add_lora_ seeds one per call), never from the global RNG
        self.A = nn.Parameter(torch.randn(rank, in_f, generator=generator) / in_f ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_f, rank))  # zero: the model starts unchanged
        self.scale = alpha
        self.mask = mask  # the Mask's own buffer, shared, so later mask changes apply here too

    def delta(self) -> Tensor:
        """The masked update this adapter adds to the weight."""
        d = (self.B @ self.A).reshape(self.shape) * self.scale
        return d if self.mask is None else d * self.mask

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.delta()


def add_lora_(model: nn.Module, rank: int = 4, scope: Any = None, seed: int = 0) -> list[nn.Parameter]:
    """Add a masked LoRA adapter to every weight in ``scope``; returns the adapters' parameters. The
    adapters' random halves are drawn, in the order of the targets, from one generator seeded with
    ``seed``: the same seed gives the same adapters whatever the global RNG holds."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    targets = select_targets(model, scope)
    gen = torch.Generator().manual_seed(seed)
    params: list[nn.Parameter] = []
    for t in targets:
        w = weight_of(t.module)
        adapter = LoRA(tuple(w.shape), rank, get_mask(t.module), generator=gen).to(w.device, w.dtype)
        parametrize.register_parametrization(t.module, "weight", adapter)
        params += [adapter.A, adapter.B]
    return params


def merge_lora_(model: nn.Module) -> int:
    """Fold every LoRA adapter into its (dense, under the mask) weight and remove it; returns how many."""
    n = 0
    for module in model.modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = module.parametrizations.weight
        for i in reversed(range(len(plist))):
            if not isinstance(plist[i], LoRA):
                continue
            with torch.no_grad():
                plist.original.add_(plist[i].delta())
            n += 1
            if len(plist) == 1:  # the adapter was all there was: give the plain weight back
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                break
            del plist[i]
    return n


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or \
        "norm" in type(module).__name__.lower()


def bias_and_norm_params(model: nn.Module) -> list[nn.Parameter]:
    """The biases of every layer and the parameters of every normalization layer (PERP's cheap set)."""
    out: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (Mask, LoRA)):
            continue
        for name, p in module.named_parameters(recurse=False):
            if _is_norm(module) or name == "bias":
                out[id(p)] = p
    return list(out.values())


def trainable_params_(model: nn.Module, mode: str, rank: int = 4, scope: Any = None,
                      seed: int = 0) -> list[nn.Parameter]:
    """The tensors a recovery ``mode`` trains: every parameter (``"full"``), biases and norms
    (``"bias_norm"``), or new masked LoRA adapters of ``rank`` on the weights in ``scope`` plus biases
    and norms (``"lora"``; the adapters are added here, drawn under ``seed``). Checks everything before
    adding anything."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "lora":
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        select_targets(model, scope)  # validate the scope before adding anything
    if mode == "bias_norm" and not bias_and_norm_params(model):
        raise ValueError(f"mode {mode!r} finds nothing to train in {type(model).__name__} (no biases or norms?)")
    if mode == "full":
        return list(model.parameters())
    if mode == "bias_norm":
        return bias_and_norm_params(model)
    return add_lora_(model, rank, scope, seed=seed) + bias_and_norm_params(model)


def recover_(model: nn.Module, data: Any, *, mode: str = "full", teacher: nn.Module | None = None,
             temperature: float = 2.0, kd_weight: float = 0.5, rank: int = 4, scope: Any = None,
             merge: bool = True, **fit_options: Any) -> RecoveryReport:
    """Retrain a pruned ``model`` with its masks fixed; returns what was trained.

    ``mode``: ``"full"`` (every parameter), ``"bias_norm"`` (biases and norm layers only) or ``"lora"``
    (masked LoRA adapters of ``rank`` on the weights in ``scope``, plus biases and norms; merged back
    when ``merge``), after PERP. With a ``teacher`` (e.g. the dense model before pruning) the loss is
    :func:`kd_loss` at ``temperature`` with ``kd_weight``. ``fit_options`` go to :func:`fit`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= kd_weight <= 1:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if teacher is not None:
        teacher = copy.deepcopy(teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    params = trainable_params_(model, mode, rank, scope, seed=fit_options.get("seed", 0))  # fit's seed
    trained = sum(p.numel() for p in params)
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    batch_loss = None
    if teacher is not None:
        def batch_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            with torch.no_grad():
                t_logits = output_tensor(call_model(teacher, x))
            return kd_loss(output_tensor(call_model(m, x)), t_logits, y, temperature=temperature, weight=kd_weight)
    for p in frozen:
        p.requires_grad_(False)
    try:
        losses = fit(model, data, parameters=params, batch_loss=batch_loss, **fit_options)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if mode == "lora" and merge:
            merge_lora_(model)
    return RecoveryReport(mode, trained, total, losses)
