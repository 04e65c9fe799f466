"""DIMAP as a method, end to end on tiny random-init Swin models (timm v1 and v2, Hugging Face), no data."""

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.criteria.dimap import module_of
from prunekit.methods import DimapConfig
from prunekit.models.vision import import_timm


def _timm_swin(v2: bool):
    timm = import_timm()
    torch.manual_seed(0)
    if v2:
        return timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=32, patch_size=2, in_chans=1,
                                 num_classes=10, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=8).eval()
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=28, patch_size=2, in_chans=1,
                             num_classes=10, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=7).eval()


def _module_sparsity(model, grouping="stage"):
    kept, total = {}, {}
    for name, mod in model.named_modules():
        mask = get_mask(mod)
        if mask is not None:
            key = module_of(name, grouping)
            kept[key] = kept.get(key, 0) + int(mask.sum())
            total[key] = total.get(key, 0) + mask.numel()
    return {k: 1 - kept[k] / total[k] for k in total}


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swinv2"])
def test_dimap_prunes_a_timm_swin_without_data(v2):
    model = _timm_swin(v2)
    x = torch.randn(2, 1, 32 if v2 else 28, 32 if v2 else 28, generator=torch.Generator().manual_seed(1))
    report = pk.prune_(model, "dimap", 0.5, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)  # a global count: exact up to rounding
    per_module = _module_sparsity(model)
    # both stages, every role (the patch merging's reduction is stage 1's auxiliary module; swinv2's position-bias
    # MLP is auxiliary too); the head stays dense (default scope)
    assert {"stage 0 / qkv", "stage 1 / qkv", "stage 0 / mlp", "stage 1 / proj", "stage 1 / aux"} <= set(per_module)
    assert get_mask(model.head.fc) is None
    # the ranking is across modules, so their sparsities differ (not a uniform 0.5 each)
    assert max(per_module.values()) - min(per_module.values()) > 0.05
    assert torch.isfinite(model(x)).all()


def test_dimap_differs_from_global_magnitude_and_from_per_layer_lamp_on_swin():
    masks = {}
    for name, kwargs in {"dimap": dict(method="dimap"), "layer": dict(method="dimap", modules="layer"),
                         "magnitude": dict(method="magnitude", allocation="global")}.items():
        model = _timm_swin(False)
        pk.prune_(model, sparsity=0.6, progress=False, **kwargs)
        masks[name] = torch.cat([get_mask(m).reshape(-1) for m in model.modules() if get_mask(m) is not None])
    assert (masks["dimap"] != masks["magnitude"]).float().mean() > 0.01
    assert (masks["dimap"] != masks["layer"]).float().mean() > 0.01
    # the layer grouping is LAMP's score ranked globally: the same masks
    lamp = _timm_swin(False)
    pk.prune_(lamp, "magnitude", 0.6, allocation="lamp", progress=False)
    assert torch.equal(masks["layer"], torch.cat([get_mask(m).reshape(-1) for m in lamp.modules()
                                                  if get_mask(m) is not None]))


def test_dimap_prunes_a_hugging_face_swin():
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    cfg = SwinConfig(image_size=28, patch_size=2, num_channels=1, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                     window_size=7, num_labels=10)
    model = SwinForImageClassification(cfg).eval()
    report = pk.prune_(model, DimapConfig(sparsity=0.4), progress=False)
    assert report.sparsity == pytest.approx(0.4, abs=1e-3)
    assert {"stage 0 / qkv", "stage 1 / proj", "stage 1 / mlp"} <= set(_module_sparsity(model))
    assert torch.isfinite(model(torch.randn(1, 1, 28, 28)).logits).all()


def test_dimap_refuses_an_unknown_grouping_before_anything_changes():
    with pytest.raises(ValueError, match="modules"):
        DimapConfig(sparsity=0.5, modules="window")
