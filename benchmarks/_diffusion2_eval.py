"""Shared by benchmarks/diffusion_ecodiff.py, diffusion_aptp.py and diffusion_memorization.py: the base DDPM,
the FID-FMNIST features, Fréchet distance with its noise floor, and paired sampling times.

FID-FMNIST: the Fréchet distance between Gaussian fits of the penultimate-layer features of the Fashion-MNIST
classifier of ``prunekit.diffusion.metrics`` (trained here; Inception weights cannot be downloaded). The
memorization run started before that module landed and used the small CNN of :func:`own_classifier` (two
epochs on the 60k training images, cached under ~/.cache/prunekit/diffusion2/); each result names its
classifier and its accuracy. The noise floor is the FID between two disjoint halves of the real test set at the same sample count.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.diffusion import TrainConfig, UNetConfig, build_unet, ddim_sample, fashion_mnist, load_unet, train_ddpm_
from prunekit.infra.latency import time_interleaved

CACHE = Path.home() / ".cache" / "prunekit"
BASE = CACHE / "diffusion" / "ddpm-fmnist-v3"
OWN = CACHE / "diffusion2"
SMALL = UNetConfig(block_out_channels=(16, 32, 32), layers_per_block=1, attention=True, attention_head_dim=8,
                   norm_num_groups=8)


def base_model(path: Path | None, train_steps: int, seed: int = 0):
    """The diffusion engineer's cached DDPM when it exists, else a small one trained here for ``train_steps``
    (cached). Returns (unet, description)."""
    path = path or BASE
    if (path / "prunekit.json").is_file():
        return load_unet(path), f"{path} (the cached base DDPM)"
    own = OWN / f"ddpm-small-{train_steps}steps-seed{seed}.pt"
    unet = build_unet(SMALL, seed=seed)
    if own.is_file():
        state = torch.load(own)
        unet.load_state_dict(state["weights"])
        unet.prunekit_schedule = state["schedule"]
        return unet.eval(), f"{own} (small DDPM trained here)"
    x, y = fashion_mnist("train")
    rep = train_ddpm_(unet, x, y, TrainConfig(steps=train_steps, batch_size=64, lr=1e-3, ema_decay=0.995, seed=seed), progress=False)
    OWN.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": unet.state_dict(), "schedule": unet.prunekit_schedule}, own)
    return unet.eval(), f"{own} (small DDPM trained here: {rep})"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(1024, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def classifier(own: bool = False):
    """(features of images in [-1, 1] → [N, d], predicted classes → [N], where it came from, test accuracy):
    ``prunekit.diffusion.metrics``' feature classifier (FID-FMNIST), or with ``own`` the small CNN below."""
    if not own:
        from prunekit.diffusion import metrics

        net, card = metrics.load_classifier()

        @torch.no_grad()
        def classes_of(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])

        acc = card.get("test_accuracy")
        return (lambda x: torch.from_numpy(metrics.features(net, x))), classes_of, \
            f"prunekit.diffusion.metrics classifier (test accuracy {acc})", acc
    return own_classifier()


def own_classifier():
    """The small CNN trained here (before the diffusion engineer's metrics landed; the memorization run used it)."""
    path = OWN / "fmnist-cnn.pt"
    net = SmallCNN()
    xt, yt = fashion_mnist("test")
    if path.is_file():
        net.load_state_dict(torch.load(path))
    else:
        x, y = fashion_mnist("train")
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(2):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 256):
                b = perm[i:i + 256]
                loss = nn.functional.cross_entropy(net(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        OWN.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net.eval()

    @torch.no_grad()
    def feats(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.body(x[i:i + 512]) for i in range(0, len(x), 512)])

    with torch.no_grad():
        acc = float(torch.cat([net(xt[i:i + 1000]).argmax(1) for i in range(0, len(xt), 1000)]).eq(yt).float().mean())
    @torch.no_grad()
    def classes(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])

    return feats, classes, f"small CNN trained here ({path}), test accuracy {acc:.3f}", acc


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (``metrics.frechet_distance``)."""
    from prunekit.diffusion.metrics import frechet_distance

    return frechet_distance(a.double().numpy(), b.double().numpy())


def noise_floor(test_feats: torch.Tensor, n: int, seed: int = 0) -> float:
    """FID between two disjoint random halves of the real test features, ``n`` each."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(test_feats), generator=g)
    return fid(test_feats[perm[:n]], test_feats[perm[n:2 * n]])


def precision_recall(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """Improved precision / recall (k = 3) of ``fake`` against ``real`` features (``metrics.precision_recall``)."""
    from prunekit.diffusion.metrics import precision_recall as pr

    p, r = pr(real.float().numpy(), fake.float().numpy())
    return {"precision": p, "recall": r}


def floors(test_feats: torch.Tensor, n: int, seed: int = 0) -> dict:
    """FID, precision and recall between two disjoint random halves of the real test features, ``n`` each: what
    the metrics give real images against real images at this sample count."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(test_feats), generator=g)
    a, b = test_feats[perm[:n]], test_feats[perm[n:2 * n]]
    return {"fid": fid(a, b), **precision_recall(a, b)}


def sampling_times(samplers: dict, budget_s: float = 60.0) -> dict:
    """Paired, interleaved wall times of each sampler (one call each per round), with the spread."""
    comp = time_interleaved(samplers, warmup=1, min_rounds=5, max_rounds=30, target_precision=0.03,
                            budget_s=budget_s, threads=1)
    return comp.to_dict()


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, out: Path, name: str, per_class: int = 8) -> str:
    """A PNG grid of the first ``per_class`` images of each class, one row per class, beside the results file
    ``out`` (in a folder named after it); returns its path relative to ``out``'s folder (what
    benchmarks/diffusion_store.py reads). (All 2,000 samples made 2 MB grids and a 25 MB report.)"""
    from prunekit.diffusion.metrics import _png, grid_pixels

    by_class = torch.argsort(labels, stable=True)
    order = torch.cat([by_class[labels[by_class] == c][:per_class] for c in labels.unique()])
    folder = out.parent / out.stem
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".png")
    path.write_bytes(_png(grid_pixels(images[order], int(labels.unique().numel()))))
    return str(path.relative_to(out.parent))


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def class_reference(n: int, classes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, feats) -> tuple:
    """FID over some classes only (diffusion_memorization.py: the non-memorized ones): balanced labels of
    ``classes`` (``n`` rounded up to a multiple of their count) and two disjoint random draws of as many of their
    *training* images ``x``, ``y`` (the test set holds 1,000 per class: too few for two disjoint draws of 5,000),
    with the FID and precision/recall floors between the draws. ``feats`` maps images to classifier features."""
    per = -(-n // len(classes))
    labels = classes.repeat(per)
    pool = torch.isin(y, classes).nonzero().flatten()
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(1))]
    if len(pool) < 2 * len(labels):
        raise ValueError(f"{n} samples: classes {classes.tolist()} hold {len(pool)} training images, fewer "
                         f"than two disjoint draws of {len(labels)}")
    a, b = feats(x[pool[:len(labels)]]), feats(x[pool[len(labels):2 * len(labels)]])
    pr = precision_recall(a, b)
    floors = {"fid": fid(a, b), "precision": pr["precision"], "recall": pr["recall"]}
    return labels, {"a": a, "floors": floors, "n": len(labels), "reference": "training images of the classes"}


def class_fid(m, labels: torch.Tensor, ref: dict, feats, *, steps: int, seed: int) -> dict:
    """FID-FMNIST and precision/recall of ``len(labels)`` samples of ``m`` (DDIM ``steps``, noise ``seed``) against
    the reference of :func:`class_reference`, beside their floors (keys ``*_other_large``: the classes are the
    memorization run's other classes)."""
    t0 = time.perf_counter()
    f = feats(ddim_sample(m, labels, steps=steps, seed=seed, batch_size=250))
    pr = precision_recall(ref["a"], f)
    out = {"fid_other_large": fid(f, ref["a"]), "fid_other_large_floor": ref["floors"]["fid"],
           "precision_other_large": pr["precision"], "recall_other_large": pr["recall"],
           "precision_other_large_floor": ref["floors"]["precision"],
           "recall_other_large_floor": ref["floors"]["recall"], "fid_other_large_n": ref["n"]}
    print(f"    FID on {ref['n']} samples {out['fid_other_large']:.2f} (floor {ref['floors']['fid']:.2f}), "
          f"P/R {pr['precision']:.3f}/{pr['recall']:.3f} [{time.perf_counter() - t0:.0f}s]", flush=True)
    return out
