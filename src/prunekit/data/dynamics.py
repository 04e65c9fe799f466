"""Per-example statistics of a classifier: streamed over a data set after training (EL2N, loss,
GraNd), or recorded at every presentation during training (forgetting events, area under the margin).

Everything streams in batches and keeps O(N) floats; the training loop matches
:func:`prunekit.train.fit` (SGD with momentum, cosine learning rate) so scores come from the same
schedule the rest of prunekit uses.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..infra.calling import call_model, output_tensor

# Each takes (logits, labels) of a batch and returns one float per example.
OutputScore = Callable[[Tensor, Tensor], Tensor]


def el2n(logits: Tensor, labels: Tensor) -> Tensor:
    """EL2N: ‖softmax(f(x)) − onehot(y)‖₂ (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021)."""
    p = logits.float().softmax(-1)
    return (p - nn.functional.one_hot(labels, p.shape[-1]).to(p.dtype)).norm(dim=-1)


def loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each example."""
    return nn.functional.cross_entropy(logits.float(), labels, reduction="none")


class _Indexed(Dataset):
    """Wraps a dataset of (x, y) so that items also carry their index."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.data[i][:2]
        return x, y, i


def stream_outputs(model: nn.Module, data: Dataset, fn: OutputScore, batch_size: int = 512,
                   progress: bool = False, desc: str = "score") -> np.ndarray:
    """``fn(logits, labels)`` for every example of ``data``, in eval mode without gradients."""
    out = np.empty(len(data), dtype=np.float64)  # type: ignore[arg-type]
    model.eval()
    start = 0
    with torch.no_grad():
        for x, y in tqdm(DataLoader(data, batch_size=batch_size), desc=desc, disable=not progress, leave=False):
            v = fn(output_tensor(call_model(model, x)), y)
            out[start:start + len(v)] = v.double().numpy()
            start += len(v)
    return out


def grad_norms(model: nn.Module, data: Dataset, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """GraNd: ‖∇_θ loss(x, y)‖₂ of every example, over all trainable parameters, with per-example
    gradients from ``torch.func`` (Paul et al., NeurIPS 2021). Eval mode: norms use running statistics."""
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = output_tensor(functional_call(model, (p, buffers), (x.unsqueeze(0),)))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    out = np.empty(len(data), dtype=np.float64)  # type: ignore[arg-type]
    start = 0
    for x, y in tqdm(DataLoader(data, batch_size=batch_size), desc="grand", disable=not progress, leave=False):
        g = per_example(params, x, y)
        sq = sum(t.flatten(1).double().pow(2).sum(1) for t in g.values())
        out[start:start + len(y)] = sq.sqrt().numpy()
        start += len(y)
    return out


def train_with_dynamics(model: nn.Module, data: Dataset, *, epochs: int, lr: float = 0.05, batch_size: int = 128,
                        momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Train ``model`` (SGD, cosine learning rate, every example once an epoch) and return, per example,
    the number of forgetting events (Toneva et al., ICLR 2019: correct at one presentation, wrong at
    the next; never-learned examples get ``epochs``, more than any learned one can have) and the area
    under the margin (Pleiss et al., NeurIPS 2020: mean of assigned logit − largest other logit)."""
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"forgetting and AUM need a whole number of epochs >= 1, got {epochs}")
    epochs = int(epochs)
    n = len(data)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(_Indexed(data), batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    last_correct = np.zeros(n, dtype=bool)
    ever_correct = np.zeros(n, dtype=bool)
    forgets = np.zeros(n, dtype=np.float64)
    margin_sum = np.zeros(n, dtype=np.float64)
    model.train()
    bar = tqdm(total=epochs * len(loader), desc="train (dynamics)", disable=not progress, leave=False)
    for _ in range(epochs):
        for x, y, idx in loader:
            logits = output_tensor(call_model(model, x))
            with torch.no_grad():
                lg = logits.detach().float()
                assigned = lg.gather(1, y[:, None]).squeeze(1)
                other = lg.scatter(1, y[:, None], float("-inf")).amax(1)
                correct = (lg.argmax(1) == y).numpy()
                i = idx.numpy()
                forgets[i] += last_correct[i] & ~correct
                last_correct[i] = correct
                ever_correct[i] |= correct
                margin_sum[i] += (assigned - other).double().numpy()
            step_loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.eval()
    forgets[~ever_correct] = epochs
    return forgets, margin_sum / epochs
