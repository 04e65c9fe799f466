"""torchvision and timm classification models, built offline with random weights at a small resolution.

The PyPI torchvision wheel is a CUDA build whose compiled operators do not load next to a CPU-only
torch; classification models need none of them, so :func:`import_torchvision` stubs the module that
registers them (``torchvision._meta_registrations``) before importing. timm imports torchvision, so
:func:`import_timm` goes through the same door.

    model, x = vision_model("tv:convnext_tiny")          # torchvision, 64×64 input
    model, x = vision_model("timm:vit_tiny_patch16_224")  # timm, img_size set to the input where it can be
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch
from torch import nn

# torchvision models that need a particular input size at this scale
TV_SIZES = {"inception_v3": 96, "googlenet": 64, "maxvit_t": 224, "vit_h_14": 56}


def import_torchvision() -> types.ModuleType:
    """Import torchvision without its compiled operators (which a CPU-only torch cannot load)."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        return importlib.import_module("torchvision")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"torchvision is needed for vision models ({exc}); pip install 'prunekit[vision]'") from exc


def import_timm() -> types.ModuleType:
    """Import timm (after making torchvision importable)."""
    import_torchvision()
    try:
        return importlib.import_module("timm")
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"timm is needed for timm models ({exc}); pip install 'prunekit[vision]'") from exc


def torchvision_model(name: str, num_classes: int = 10, image_size: int | None = None, seed: int = 0
                      ) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision classification model with random weights (eval mode) and a 1-image input."""
    tv = import_torchvision()
    size = image_size or TV_SIZES.get(name, 64)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    if name == "maxvit_t":
        kwargs["input_size"] = (size, size)
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(seed)
    model = tv.models.get_model(name, weights=None, **kwargs)
    return model.eval(), torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_model(name: str, num_classes: int = 10, image_size: int = 64, seed: int = 0
               ) -> tuple[nn.Module, torch.Tensor]:
    """A timm model with random weights (eval mode); ``img_size`` is set where the model takes it."""
    timm = import_timm()
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model.eval(), torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def classifier(model: nn.Module) -> list[nn.Module]:
    """The model's final classifier layer(s), to keep its outputs whole (``ignore=``)."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        heads = list(head) if isinstance(head, (tuple, list)) else [head]
        return [h for h in heads if isinstance(h, nn.Module) and any(True for _ in h.parameters())]
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:]


def vision_model(spec: str, num_classes: int = 10, image_size: int | None = None, seed: int = 0
                 ) -> tuple[nn.Module, torch.Tensor]:
    """``"tv:<name>"`` or ``"timm:<name>"`` (optionally ``@<size>``): the model and an input for it."""
    source, _, rest = spec.partition(":")
    name, _, size = rest.partition("@")
    size_i = int(size) if size else image_size
    if source in ("tv", "torchvision"):
        return torchvision_model(name, num_classes, size_i, seed)
    if source == "timm":
        return timm_model(name, num_classes, size_i or 64, seed)
    raise ValueError(f"vision model spec must start with 'tv:' or 'timm:', got {spec!r}")
