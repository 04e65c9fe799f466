"""prunekit: prune neural networks and data sets, and measure honestly what each method buys.

    import prunekit as pk
    report = pk.prune_(model, method="magnitude", sparsity=0.9, allocation="global")
    print(pk.summary(model, example_inputs=x))
    pk.finalize_(model)
"""

from . import _compat

_compat.install()

from .core.allocate import ALLOCATIONS, allocate
from .core.mask import Mask, finalize_, get_mask, load_state_dict_, masked_modules, set_mask_, unprune_
from .core.pattern import Pattern, parse_pattern
from .core.scope import Scope, Target, select_targets
from .core.sparse_io import effective_state_dict, load_sparse, save_sparse
from .metrics.summary import ModelSummary, summary
from .criteria import CRITERIA
from .methods import METHODS, PruneReport, prune_
from .infra.latency import Latency, latency

__version__ = "0.1.0"

_SUBPACKAGES = ("bench", "data", "recipe", "structured", "train")


def __getattr__(name: str):
    """Import the larger subpackages (``pk.data``, ``pk.structured``, ``pk.train``) on first use."""
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ALLOCATIONS", "CRITERIA", "Latency", "METHODS", "Mask", "ModelSummary", "Pattern", "PruneReport", "Scope", "Target",
    "allocate", "effective_state_dict", "latency", "finalize_", "get_mask", "load_sparse", "load_state_dict_",
    "masked_modules", "parse_pattern", "prune_", "save_sparse", "select_targets", "set_mask_", "summary",
    "unprune_", "__version__", *_SUBPACKAGES,
]
