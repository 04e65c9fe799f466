"""Metrics for the Fashion-MNIST DDPM that can be trusted here, where no Inception weights are reachable.

- **FID-FMNIST / KID**: Fréchet distance and kernel inception distance over the 128 penultimate features of a
  small Fashion-MNIST classifier trained here (:func:`load_classifier`; its test accuracy is in its card).
  *Not* Inception features: the numbers compare models of this page with one another, not with papers.
- **precision / recall**: k-nearest-neighbour manifolds (Kynkäänniemi et al., 2019) in the same features.
- every figure comes with its **noise floor**: the same metric between two disjoint halves of the real test
  set of the same size as the generated set.
- **class accuracy**: the classifier's accuracy on the samples against the labels they were asked for.
- MACs per denoising step (``prunekit.metrics.macs``), parameters, sampling time (paired and interleaved,
  ``prunekit.infra.latency``), and PNG image grids (one row per class).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..infra.atomic import atomic_file, output_folder
from ..infra.latency import Comparison, time_interleaved
from ..infra.meta import read_meta, write_meta
from ..metrics.macs import count_macs
from .data import fashion_mnist
from .ddpm import ddim_sample, sha256_file
from .model import count_params

CACHE = Path.home() / ".cache" / "prunekit" / "diffusion"
CLASSIFIER_KIND = "prunekit-fmnist-feature-classifier"
FEATURES = 128


# ------------------------------------------------------------------------------------------ classifier


class FeatureNet(nn.Module):
    """A small CNN on 32×32 Fashion-MNIST in [-1, 1]; ``features`` gives its 128 penultimate activations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def classifier_accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on ``images`` against ``labels``."""
    net.eval()
    hits = sum(int((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / max(len(images), 1)


def train_classifier(*, epochs: int = 3, limit: int | None = None, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, progress: bool = False) -> tuple[FeatureNet, dict[str, Any]]:
    """Train :class:`FeatureNet` on (the first ``limit`` images of) the Fashion-MNIST train split; returns it and
    its card (test accuracy on the 10,000 test images). The defaults (3 epochs of the 60,000 images) take about
    two minutes on one idle CPU thread (test accuracy 0.889)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x, y = fashion_mnist("train", limit=limit)
    xt, yt = fashion_mnist("test")
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in tqdm(range(0, len(x) - batch_size + 1, batch_size), disable=not progress, leave=False):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
    net.eval()
    card = {"kind": CLASSIFIER_KIND, "test_accuracy": classifier_accuracy(net, xt, yt), "epochs": epochs,
            "train_images": len(x), "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": time.perf_counter() - t0,
            "features": FEATURES, "note": "FID-FMNIST uses these features, not Inception's"}
    return net, card


def load_classifier(folder: str | Path | None = None, *, train_if_missing: bool = True,
                    progress: bool = False) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature classifier cached in ``folder`` (default ``~/.cache/prunekit/diffusion/fmnist-classifier-v3``),
    trained and cached on first use (about two minutes on one idle CPU thread). Returns it (eval mode) and its card."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder) if folder else CACHE / "fmnist-classifier-v3"
    meta = read_meta(folder) if folder.is_dir() else None
    if meta is None or meta.get("kind") != CLASSIFIER_KIND:
        if not train_if_missing:
            raise FileNotFoundError(f"no feature classifier at {folder}; call load_classifier() once to train it")
        net, card = train_classifier(progress=progress)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with output_folder(folder, overwrite=True) as tmp:
            save_file(net.state_dict(), str(tmp / "model.safetensors"))
            write_meta(tmp, {**card, "weights_sha256": sha256_file(tmp / "model.safetensors")})
        meta = read_meta(folder)
    if sha256_file(folder / "model.safetensors") != meta.get("weights_sha256"):
        raise ValueError(f"{folder / 'model.safetensors'} does not match its recorded sha256; delete {folder} to retrain")
    net = FeatureNet()
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    net.eval()
    return net, meta


@torch.no_grad()
def features(net: FeatureNet, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """The classifier's penultimate features of ``images`` ([N, 1, 32, 32] in [-1, 1]) as float64 [N, 128]."""
    net.eval()
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, len(images), batch)]).double().numpy()


# ------------------------------------------------------------------------------------------ distances


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` ([N, D] each)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1)  # tr sqrt(S1 S2) = tr sqrt(S1^½ S2 S1^½), symmetric PSD
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def kernel_distance(a: np.ndarray, b: np.ndarray, *, subsets: int = 10, subset_size: int = 500,
                    seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD² with the cubic polynomial kernel ``(x·y/D + 1)³``, mean and standard deviation
    over ``subsets`` random subsets of ``subset_size`` (or fewer) from each set."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` ([len(a), len(b)], float64), without the
    [len(a), len(b), dim] difference tensor (23.8 GiB at 5,000 × 5,000 × 128)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn_radius(x: np.ndarray, k: int, chunk: int = 1000) -> np.ndarray:
    """Distance from each row of ``x`` to its ``k``-th nearest other row."""
    out = []
    for i in range(0, len(x), chunk):
        d = _sq_distances(x[i:i + chunk], x)
        d[np.arange(len(d)), np.arange(i, i + len(d))] = 0.0  # the point itself, exactly
        out.append(np.sqrt(np.partition(d, k, axis=1)[:, k]))  # column 0 is the point itself
    return np.concatenate(out) if out else np.zeros(0)


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """Whether each of ``points`` lies in at least one ball (``centres``, ``radii``)."""
    out = [(_sq_distances(points[i:i + chunk], centres) <= (radii ** 2)[None, :]).any(1)
           for i in range(0, len(points), chunk)]
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019): the share of ``fake`` inside the union of the
    real samples' k-NN balls, and of ``real`` inside the fake samples'."""
    return (float(_inside(fake, real, _knn_radius(real, k)).mean()),
            float(_inside(real, fake, _knn_radius(fake, k)).mean()))


# ------------------------------------------------------------------------------------------ the evaluation


@dataclass
class SampleQuality:
    """FID-FMNIST, KID, precision/recall and class accuracy of ``n`` samples, each beside its noise floor (the
    same metric between two disjoint halves of the real test set of ``n`` images each)."""

    n: int
    steps: int
    fid: float
    fid_floor: float
    kid: float
    kid_std: float
    kid_floor: float
    precision: float
    recall: float
    precision_floor: float
    recall_floor: float
    class_accuracy: float
    seed: int = 0
    seconds: float = 0.0
    note: str = "FID-FMNIST/KID over a Fashion-MNIST classifier's penultimate features, not Inception"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"FID-FMNIST {self.fid:.2f} (floor {self.fid_floor:.2f}), KID {self.kid * 1e3:.2f}e-3 "
                f"(floor {self.kid_floor * 1e3:.2f}e-3), precision {self.precision:.3f} / recall {self.recall:.3f} "
                f"(floor {self.precision_floor:.3f} / {self.recall_floor:.3f}), class accuracy "
                f"{self.class_accuracy:.3f}; {self.n} samples, {self.steps} DDIM steps")


@dataclass
class RealReference:
    """Features of two disjoint halves of the real test set (``a`` is the reference; ``b`` gives the floor)."""

    a: np.ndarray
    b: np.ndarray
    floors: dict[str, float] = field(default_factory=dict)


def real_reference(net: FeatureNet, n: int, seed: int = 0) -> RealReference:
    """Two disjoint random halves of ``n`` images each from the Fashion-MNIST test set (10,000 images), with the
    noise floor of every metric between them."""
    if not 2 <= n <= 5000:
        raise ValueError(f"n must be in [2, 5000] (two disjoint halves of the 10,000 test images), got {n}")
    x, _ = fashion_mnist("test")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    fa, fb = features(net, x[order[:n]]), features(net, x[order[n:2 * n]])
    kid, _ = kernel_distance(fa, fb, seed=seed)
    p, r = precision_recall(fa, fb)
    return RealReference(fa, fb, {"fid": frechet_distance(fa, fb), "kid": kid, "precision": p, "recall": r})


def check_fmnist_unet(unet) -> None:
    """Raise (one line) unless ``unet`` makes what FID-FMNIST compares with the real test set: one grey channel,
    32×32 pixels, the 10 Fashion-MNIST classes."""
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    if cfg.in_channels != 1 or size not in (32, (32, 32)) or cfg.num_class_embeds != 10:
        raise ValueError(f"FID-FMNIST compares 1x32x32 samples of the 10 Fashion-MNIST classes with the real test "
                         f"set; this UNet makes {cfg.in_channels}-channel {size}-pixel images of "
                         f"{cfg.num_class_embeds} classes")


def balanced_labels(n: int, classes: int = 10) -> torch.Tensor:
    """``n`` labels cycling through the classes (as even as ``n`` allows)."""
    return torch.arange(n) % classes


def sample_quality(unet, *, n: int = 1000, steps: int = 20, seed: int = 0, classifier: FeatureNet | None = None,
                   reference: RealReference | None = None, batch_size: int = 250,
                   samples: torch.Tensor | None = None) -> SampleQuality:
    """Sample ``n`` images (balanced classes, DDIM ``steps``) and measure them against the real test set, each
    metric beside its noise floor. ``samples`` skips the sampling (they must be ``n`` images of the balanced
    labels)."""
    t0 = time.perf_counter()
    check_fmnist_unet(unet)
    net = classifier if classifier is not None else load_classifier()[0]
    ref = reference if reference is not None and len(reference.a) == n else real_reference(net, n, seed=0)
    labels = balanced_labels(n, unet.config.num_class_embeds or 10)
    if samples is None:
        samples = ddim_sample(unet, labels, steps=steps, seed=seed, batch_size=batch_size)
    if len(samples) != n:
        raise ValueError(f"samples holds {len(samples)} images; expected n={n}")
    f = features(net, samples)
    kid, kid_std = kernel_distance(ref.a, f, seed=seed)
    p, r = precision_recall(ref.a, f)
    return SampleQuality(n=n, steps=steps, fid=frechet_distance(ref.a, f), fid_floor=ref.floors["fid"], kid=kid,
                         kid_std=kid_std, kid_floor=ref.floors["kid"], precision=p, recall=r,
                         precision_floor=ref.floors["precision"], recall_floor=ref.floors["recall"],
                         class_accuracy=classifier_accuracy(net, samples, labels), seed=seed,
                         seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ cost


def step_inputs(unet, batch: int = 1) -> dict[str, torch.Tensor]:
    """The keyword inputs of one denoising step of ``unet`` (zeros, timestep 500, class 0)."""
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    return {"sample": torch.zeros(batch, cfg.in_channels, size, size), "timestep": torch.full((batch,), 500),
            "class_labels": torch.zeros(batch, dtype=torch.long)}


def macs_per_step(unet) -> int:
    """MACs of one denoising step (one UNet call) on one 32×32 image."""
    return count_macs(unet, step_inputs(unet))


def unet_cost(unet) -> dict[str, int]:
    """Parameters and MACs per denoising step."""
    return {"params": count_params(unet), "macs_per_step": macs_per_step(unet)}


def sampling_time(unets: dict[str, Any], *, n: int = 10, steps: int = 10, budget_s: float = 60.0,
                  min_rounds: int = 5, threads: int = 1) -> Comparison:
    """Wall time to sample ``n`` images with ``steps`` DDIM steps, for each UNet, paired and interleaved (the
    first one is the reference of the ratios). Measured, never derived from MACs."""
    labels = balanced_labels(n)
    fns: dict[str, Callable[[], Any]] = {name: (lambda u=u: ddim_sample(u, labels, steps=steps, batch_size=n))
                                         for name, u in unets.items()}
    return time_interleaved(fns, warmup=1, min_rounds=min_rounds, budget_s=budget_s, threads=threads)


# ------------------------------------------------------------------------------------------ image grids


def _png(pixels: np.ndarray) -> bytes:
    """A greyscale 8-bit PNG of ``pixels`` ([H, W] uint8)."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def grid_pixels(images: torch.Tensor, rows: int, pad: int = 2) -> np.ndarray:
    """Images ([rows·cols, 1, H, W] in [-1, 1]) tiled row-major into one uint8 array."""
    n, _, h, w = images.shape
    cols = -(-n // rows)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=np.uint8)
    px = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = px[i]
    return out


def save_grid(unet_or_images, path: str | Path, *, per_class: int = 8, steps: int = 20, seed: int = 0,
              classes: int = 10) -> Path:
    """A PNG grid, one row per class (``per_class`` samples each), of a UNet's samples or of given images
    ([classes·per_class, 1, H, W], row-major). Written atomically."""
    if isinstance(unet_or_images, torch.Tensor):
        images = unet_or_images
    else:
        labels = torch.arange(classes).repeat_interleave(per_class)
        images = ddim_sample(unet_or_images, labels, steps=steps, seed=seed)
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(_png(grid_pixels(images, classes)))
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
