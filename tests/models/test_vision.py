"""torchvision / timm builders that need none of torchvision's compiled operators."""

import pytest
import torch

from prunekit.models.vision import classifier, import_timm, import_torchvision, vision_model


def test_torchvision_and_timm_import_and_build_offline():
    tv = import_torchvision()
    assert hasattr(tv.models, "convnext_tiny") and import_timm().__name__ == "timm"
    model, x = vision_model("tv:squeezenet1_1")
    assert x.shape == (1, 3, 64, 64) and model(x).shape == (1, 10) and not model.training
    head = classifier(model)
    assert len(head) == 1 and isinstance(head[0], torch.nn.Conv2d)  # squeezenet classifies with a 1×1 conv
    model, x = vision_model("timm:resnet18@32")
    assert x.shape == (1, 3, 32, 32) and model(x).shape == (1, 10) and classifier(model) == [model.fc]


def test_a_bad_spec_says_what_is_expected():
    with pytest.raises(ValueError, match="'tv:' or 'timm:'"):
        vision_model("resnet18")
