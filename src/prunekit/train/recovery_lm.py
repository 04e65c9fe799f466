"""Recovery after pruning a language model: a short causal-LM fine-tune on calibration text.

The same three modes as :func:`prunekit.train.recover_` — biases and norms only (PERP, Zimmer et
al., 2023), masked LoRA adapters merged back (LoRAPrune, Zhang et al., 2023; PERP's LoRA variant),
or every parameter — trained with AdamW on next-token loss over windows of calibration tokens. It
works after any pruning: masks stay in force (and zeros baked in without masks are kept, by masking
them while training), structured and sliced models are plain smaller models. The report gives the
trained fraction, the steps, tokens and time, and the perplexity before and after when evaluation
windows are given.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.config import Config
from ..core.mask import get_mask, remove_mask_, set_mask_
from ..core.registry import Registry
from ..core.scope import select_targets
from .recovery import MODES, merge_lora_, trainable_params_

DEFAULT_LR = {"bias_norm": 1e-3, "lora": 5e-4, "full": 2e-5}


class RecoveryConfig(Config):
    """Settings of an LLM recovery stage: which tensors train, for how many steps, on what windows."""

    recover: Literal["bias_norm", "lora", "full"] = "bias_norm"
    steps: int = Field(100, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    seqlen: int | None = Field(None, ge=2)
    rank: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    keep_zeros: bool = True
    seed: int = 0


RECOVERY: Registry = Registry("recovery", key="recover")


def optimizer_step_(loss: Tensor, opt: Any, sched: Any, params: list[Tensor], max_grad_norm: float,
                    what: str = "recovery") -> float:
    """One clipped optimizer and scheduler step on ``loss``; returns it as a float. A non-finite loss is an
    error before the weights change (they would turn to NaN and be saved as a broken model)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} loss became {value}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    return value


def loss_ends(losses: list[float]) -> dict[str, float | None]:
    """``loss_first`` / ``loss_last``: the means of the first and the last tenth of a run's step losses."""
    k = max(1, len(losses) // 10)
    return {"loss_first": sum(losses[:k]) / k if losses else None,
            "loss_last": sum(losses[-k:]) / k if losses else None}


@dataclass
class LMRecoveryReport:
    """What :func:`recover_lm_` trained and what it bought."""

    mode: str
    trained_params: int
    total_params: int
    steps: int
    tokens: int
    lr: float
    seconds: float
    cpu_seconds: float
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        """Share of the model's parameters that were trained (LoRA adapters counted as trained)."""
        return self.trained_params / self.total_params

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; losses summarised by the means of the first and last tenth of the steps."""
        d = asdict(self)
        return {**d, "trained_fraction": self.trained_fraction, **loss_ends(d.pop("losses"))}

    def __str__(self) -> str:
        ppl = ""
        if self.perplexity_before is not None and self.perplexity_after is not None:
            ppl = f", perplexity {self.perplexity_before:.2f} → {self.perplexity_after:.2f}"
        return (f"recovery ({self.mode}): {self.trained_params:,} of {self.total_params:,} parameters trained "
                f"({self.trained_fraction:.3%}), {self.steps} steps × {self.tokens // max(self.steps, 1):,} tokens, "
                f"lr {self.lr:g}, {self.seconds:.0f} s ({self.cpu_seconds:.0f} s CPU){ppl}")


def training_windows(calibration: Any, seqlen: int | None = None) -> Tensor:
    """Calibration token ids as (n, seqlen) rows for training: whole windows, or each cut into ``seqlen`` pieces."""
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(c, Tensor) for c in calibration):
        calibration = torch.cat([c.reshape(-1, c.shape[-1]) for c in calibration])
    if not isinstance(calibration, Tensor) or calibration.dim() != 2 or calibration.dtype not in (torch.int64,
                                                                                                    torch.int32):
        raise ValueError(
            "recovery needs calibration text as token ids of shape (nsamples, seqlen) (e.g. "
            "prunekit.datasets.text.calibration_windows(tokenizer, 'pydocs', 32, 512)); "
            f"got {type(calibration).__name__}")
    ids = calibration.long()
    if seqlen is not None and seqlen < ids.shape[1]:
        ids = ids[:, : ids.shape[1] // seqlen * seqlen].reshape(-1, seqlen)
    if ids.shape[1] < 2:
        raise ValueError(f"training windows need at least 2 tokens each, got {ids.shape[1]}")
    return ids


def checked_windows(model: nn.Module, calibration: Any, seqlen: int | None, batch_size: int) -> Tensor:
    """:func:`training_windows` of ``calibration``, checked to fill one batch of ``batch_size`` and to hold only
    token ids inside ``model``'s vocabulary."""
    ids = training_windows(calibration, seqlen)
    if ids.shape[0] < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {ids.shape[0]} training windows; "
                         "pass a smaller batch_size or more calibration text")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(f"calibration holds token id {int(ids.max())}, outside the model's vocabulary of {vocab}")
    return ids


def _pin_zeros_(model: nn.Module) -> list[nn.Module]:
    """Mask the exact zeros of every in-scope weight that has no mask yet; returns the modules masked here."""
    pinned = []
    for t in select_targets(model, None):
        if get_mask(t.module) is not None:
            continue
        keep = t.module.weight.detach() != 0
        if not bool(keep.all()):
            set_mask_(t.module, keep)
            pinned.append(t.module)
    return pinned


def recover_lm_(model: nn.Module, calibration: Any, config: RecoveryConfig | dict | None = None, *,
                eval_windows: Tensor | None = None, progress: bool = True, **fields: Any) -> LMRecoveryReport:
    """Fine-tune a pruned causal LM in place on ``calibration`` token ids and return what it trained.

    ``config`` (or the keyword ``fields`` of :class:`RecoveryConfig`: ``recover`` = ``"bias_norm"`` |
    ``"lora"`` | ``"full"``, ``steps``, ``lr``, ``batch_size``, ``seqlen``, ``rank``, ...) says how.
    Masks stay in force; zeros without masks are kept (``keep_zeros``); LoRA adapters are merged back.
    With ``eval_windows`` the report has the perplexity before and after. Checked before anything changes.
    """
    from ..metrics.perplexity import perplexity

    cfg = config if isinstance(config, RecoveryConfig) else RecoveryConfig.parse(config or {}, **fields)
    if isinstance(config, RecoveryConfig) and fields:
        cfg = config.replace(**fields)
    if calibration is None:
        raise ValueError("recovery needs calibration text (token ids); pass calibration= windows, or on the command "
                         "line --calib TEXT")
    ids = checked_windows(model, calibration, cfg.seqlen, cfg.batch_size)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.recover]
    before = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    total = sum(p.numel() for p in model.parameters())
    pinned = _pin_zeros_(model) if cfg.keep_zeros and cfg.recover != "bias_norm" else []
    params = trainable_params_(model, cfg.recover, cfg.rank, seed=cfg.seed)  # LoRA's adapters drawn under the seed
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        losses = _train(model, params, ids, cfg, lr, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if cfg.recover == "lora":
            merge_lora_(model)
        for module in pinned:
            remove_mask_(module, bake=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    return LMRecoveryReport(cfg.recover, sum(p.numel() for p in params), total, len(losses),
                            len(losses) * cfg.batch_size * ids.shape[1], lr, seconds, cpu, before, after, losses)


def _train(model: nn.Module, params: list[nn.Parameter], ids: Tensor, cfg: RecoveryConfig, lr: float,
           progress: bool) -> list[float]:
    """AdamW on next-token loss, cosine decay after a 10% warm-up, gradients clipped; seeded window order."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        for _ in tqdm(range(cfg.steps), desc=f"recover ({cfg.recover})", disable=not progress, leave=False):
            if len(order) < cfg.batch_size:
                order += torch.randperm(ids.shape[0], generator=gen).tolist()
            batch = ids[order[:cfg.batch_size]].to(device)
            del order[:cfg.batch_size]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            losses.append(optimizer_step_(loss, opt, sched, params, cfg.max_grad_norm,
                                          f"recovery (step {len(losses) + 1}, lr {lr:g})"))
    finally:
        model.train(was_training)
        model.eval()
    return losses


for _mode in MODES:
    RECOVERY.add(_mode, recover_lm_, config=RecoveryConfig)
