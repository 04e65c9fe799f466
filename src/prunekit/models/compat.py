"""Import-time fixes for third-party packages prunekit loads models with.

torchvision's PyPI wheels are CUDA builds whose C operators do not load beside a CPU-only torch:
``import torchvision`` then fails in ``torchvision._meta_registrations`` ("operator torchvision::nms
does not exist"), and with it every ``transformers`` model class (transformers imports torchvision
when it is installed). Model loading needs none of torchvision's C operators, so when that import
fails this module retries it with the meta registrations stubbed out.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_META = "torchvision._meta_registrations"


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work (without its C operators) when its wheel does not match torch.

    Does nothing when torchvision is absent, already imported, or imports cleanly.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules[_META] = types.ModuleType(_META)
        importlib.import_module("torchvision")
