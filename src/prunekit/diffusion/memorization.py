"""Memorization in a class-conditional DDPM: measure it, locate the units it lives in, delete them.

After Chavhan et al., "Memorized Images in Diffusion Models share a Subspace that can be Located and Deleted":
contrast the activations of the UNet's units (``units.py``: resnet blocks' inner GroupNorm groups, the UNet's
feed-forward neurons, and attention heads) on memorized prompts against non-memorized ones, over the DDIM
trajectory; the units that memorized prompts drive far above the non-memorized distribution (a z-score per
unit) form the memorization subspace; deleting them (physically) mitigates memorization with no retraining.
Here a prompt is a class label.

A sample counts as a copy when its nearest training image in a feature space (a Fashion-MNIST classifier's
penultimate layer) is closer than ``threshold``; :func:`copy_threshold` states the rule used: a low quantile
of the distances from *real unseen* (test) images to their nearest training image, so a real new image is
called a copy only that often.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import torch
from torch import nn

from .ddpm import check_labels
from .ecodiff import ddim_timesteps, trajectory
from .units import RemovalReport, UnitLayer, find_unit_layers, recorded, remove_units_


def nearest(features: torch.Tensor, train_features: torch.Tensor, *, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each row of ``features`` to its nearest row of ``train_features``, and its index."""
    dists, idx = [], []
    for i in range(0, len(features), chunk):
        d = torch.cdist(features[i:i + chunk].double(), train_features.double())
        m = d.min(dim=1)
        dists.append(m.values)
        idx.append(m.indices)
    return torch.cat(dists).float(), torch.cat(idx)


def standardized_pixels(images: torch.Tensor) -> torch.Tensor:
    """Each image flattened, less its mean, over its norm: Euclidean distance between two rows is
    ``sqrt(2 (1 - r))`` with ``r`` the images' pixel correlation. A second copy criterion beside the classifier's
    features: blind to brightness and contrast, and on the Fashion-MNIST benchmark's training set a copy with pixel
    noise of 0.1 (on [-1, 1]) or a background lifted by 0.2 still falls under its 1% threshold, where noise of 0.05
    or a background lifted by 0.1 already moves it past the threshold in the features of ``diffusion.metrics``'
    classifier (measured)."""
    flat = images.reshape(len(images), -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def copy_threshold(test_features: torch.Tensor, train_features: torch.Tensor, quantile: float = 0.01) -> float:
    """The copy threshold: the ``quantile`` of nearest-training-image distances of real test images (which
    are never copies), so only that fraction of real new images would be called copies."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    d, _ = nearest(test_features, train_features)
    return float(torch.quantile(d.double(), quantile))


def memorization_rate(features: torch.Tensor, train_features: torch.Tensor, threshold: float) -> float:
    """The fraction of samples (their ``features``) closer than ``threshold`` to some training image."""
    d, _ = nearest(features, train_features)
    return float((d < threshold).float().mean())


@torch.no_grad()
def unit_activations(unet: nn.Module, labels: torch.Tensor, *, steps: int = 10, seed: int = 0,
                     batch_size: int = 128, layers: list[UnitLayer] | None = None) -> torch.Tensor:
    """``[N, units]``: each unit's mean absolute output over the ``steps``-step DDIM trajectory of each label's
    sample (initial noise from ``seed``, as ``ddpm.ddim_sample``)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_labels(unet, labels)
    sched = ddim_timesteps(unet, steps)  # refuses a step count the model was not trained for
    layers = layers or find_unit_layers(unet)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    noise = torch.randn((len(labels), cfg.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    was = unet.training
    unet.eval()
    out = []
    try:
        for i in range(0, len(labels), batch_size):
            with recorded(unet, layers) as acts:
                trajectory(unet, noise[i:i + batch_size], labels[i:i + batch_size], sched)
            out.append(torch.stack(acts).mean(0))
    finally:
        unet.train(was)
    return torch.cat(out)


@dataclass
class Located:
    """The memorization subspace: per unit (all layers concatenated) its z-score (memorized prompts' mean
    activation against the non-memorized prompts' mean and spread) and whether it was selected."""

    layers: list[UnitLayer]
    z: torch.Tensor
    selected: torch.Tensor
    min_z: float

    def per_layer(self) -> dict[str, int]:
        parts = torch.split(self.selected, [layer.units for layer in self.layers])
        return {layer.name: int(p.sum()) for layer, p in zip(self.layers, parts) if int(p.sum())}

    def to_dict(self) -> dict:
        return {"selected": int(self.selected.sum()), "units": len(self.selected), "min_z": self.min_z,
                "per_layer": self.per_layer(), "max_z": float(self.z.max())}


def locate(memorized: torch.Tensor, others: torch.Tensor, layers: list[UnitLayer], *, fraction: float = 0.05,
           min_z: float = 2.0) -> Located:
    """Select the units that memorized prompts activate far above non-memorized ones: z = (mean over memorized
    − mean over others) / std over others, per unit; the top ``fraction`` of units by z among those with
    z > ``min_z``. ``memorized``/``others`` are ``unit_activations`` rows."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(memorized) < 1 or len(others) < 2:
        raise ValueError("need activations of at least one memorized and two non-memorized samples")
    mu, sd = others.mean(0), others.std(0)
    z = (memorized.mean(0) - mu) / sd.clamp_min(1e-12)
    k = max(1, int(round(fraction * len(z))))
    top = torch.zeros_like(z, dtype=torch.bool)
    top[torch.topk(z, k).indices] = True
    return Located(layers, z, top & (z > min_z), min_z)


def overlap(a: Located, b: Located) -> tuple[float, float]:
    """Intersection over union of two located unit sets, and the IoU two random sets of the same sizes would
    have in expectation (approximately ``|A||B| / n`` shared units)."""
    sa, sb = int(a.selected.sum()), int(b.selected.sum())
    inter = int((a.selected & b.selected).sum())
    union = sa + sb - inter
    n = len(a.selected)
    chance_inter = sa * sb / n
    chance = chance_inter / (sa + sb - chance_inter) if sa + sb else 0.0
    return (inter / union if union else 0.0), chance


@dataclass
class ForgetReport:
    """What :func:`forget_` removed: the located units (kept back where a whole layer would go) and the
    removal's parameter counts."""

    located: int
    removed: int
    kept_back: int
    removal: RemovalReport

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "removal"}, **self.removal.to_dict()}

    def __str__(self) -> str:
        back = f" ({self.kept_back} kept so no layer loses every unit)" if self.kept_back else ""
        return f"forget: deleted {self.removed} of {self.located} located memorization units{back}; {self.removal}"


def forget_(unet: nn.Module, located: Located) -> ForgetReport:
    """Delete, in place, the units of the memorization subspace ``located`` on this UNet. A layer whose every
    unit was selected keeps its lowest-z unit. Checked before anything changes."""
    layers = find_unit_layers(unet)
    if [(m.name, m.units) for m in layers] != [(m.name, m.units) for m in located.layers]:
        raise ValueError("the subspace was located on a UNet of another layout; locate it on this one")
    keep, back = [], 0
    for sel, z in zip(torch.split(located.selected, [m.units for m in layers]),
                      torch.split(located.z, [m.units for m in layers])):
        k = ~sel
        if not bool(k.any()):
            k[int(z.argmin())] = True
            back += 1
        keep.append(k)
    removal = remove_units_(unet, layers, keep)
    located_n = int(located.selected.sum())
    return ForgetReport(located=located_n, removed=located_n - back, kept_back=back, removal=removal)


def duplicated_subset(images: torch.Tensor, labels: torch.Tensor, memorized: list[int], *, per_memorized: int = 4,
                      copies: int = 50, per_other: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor, torch.Tensor]:
    """A training set that invites memorization: ``per_memorized`` images of each class in ``memorized``,
    each repeated ``copies`` times, and ``per_other`` distinct images of every other class. Returns
    ``(images, labels, unique_images, unique_labels)`` (the latter without repeats: the set copies are
    looked for in)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, ux, uy = [], [], [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = per_memorized if c in memorized else per_other
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {n} asked")
        pick = idx[:n]
        ux.append(images[pick])
        uy.append(labels[pick])
        reps = copies if c in memorized else 1
        xs.append(images[pick].repeat(reps, 1, 1, 1))
        ys.append(labels[pick].repeat(reps))
    return torch.cat(xs), torch.cat(ys), torch.cat(ux), torch.cat(uy)
