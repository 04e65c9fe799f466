"""Work-arounds for broken environments, installed when prunekit is imported.

PyPI's torchvision wheels are CUDA builds: beside a CPU build of torch their C extension does not
load, and ``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` ("operator
torchvision::nms does not exist"). transformers imports torchvision whenever it is installed, so
every Hugging Face model fails to load. Classification models need none of torchvision's C ops, so
when — and only when — that module fails in this way, an empty module stands in for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_NAME = "torchvision._meta_registrations"


class _GuardedLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec):  # the default module creation
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            self.real.exec_module(module)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise
            module.__doc__ = f"stand-in: torchvision's C ops did not load beside this torch ({exc})"


class _GuardedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _GuardedLoader(spec.loader)
        return spec


def install() -> None:
    """Put the guard in front of the import system once (a no-op if torchvision is already imported)."""
    if _NAME in sys.modules or any(isinstance(f, _GuardedFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _GuardedFinder())
