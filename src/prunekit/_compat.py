"""Import-time fixes for the environments prunekit runs in.

torchvision's PyPI wheel is a CUDA build; beside the CPU build of torch its C operators do not load,
and the module that registers their fake kernels (``torchvision._meta_registrations``) raises on
import, which breaks ``import transformers`` (it imports torchvision for image utilities). prunekit
needs none of torchvision's C operators, so an empty stand-in for that one module is registered
before anything imports torchvision. Where torchvision is absent or already imported this does nothing.
"""

from __future__ import annotations

import sys
import types


def _stub_torchvision_meta_registrations() -> None:
    name = "torchvision._meta_registrations"
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(name, types.ModuleType(name))


_stub_torchvision_meta_registrations()
