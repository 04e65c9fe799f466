"""Token pruning and merging at inference, for ViTs, encoders and decoder LLMs.

    import prunekit.tokens as pt
    pt.merge_(vit, r=8)                                           # ToMe
    pt.prune_(vit, keep=0.5, method="attention", layers=(4, 8))   # Zero-TPrune-style, no training
    pt.prune_(llm, keep=0.5, method="fastv", layer=2)             # decoder prompt + KV cache
    pt.unpatch_(model)                                            # back to the original, exactly

Every patch keeps the model's fused attention kernel, returns a :class:`TokenReport`, and is undone
exactly by :func:`unpatch_`; a second patch on a patched model is an error.
"""

from .api import TOKEN_METHODS, UnpatchReport, apply_, last_forward, max_uniform_r, merge_, prune_, report_of, unpatch_
from .config import FastVConfig, MeanAttentionConfig, RandomPruneConfig, ToMeConfig, ZeroTPruneConfig
from .encoders import DECODER_FAMILIES, ENCODER_FAMILIES, UnsupportedModel
from .patching import is_patched
from .report import TokenReport

__all__ = [
    "DECODER_FAMILIES", "ENCODER_FAMILIES", "FastVConfig", "MeanAttentionConfig", "RandomPruneConfig", "TOKEN_METHODS",
    "TokenReport", "ToMeConfig", "UnpatchReport", "UnsupportedModel", "ZeroTPruneConfig", "apply_", "is_patched",
    "last_forward", "max_uniform_r", "merge_", "prune_", "report_of", "unpatch_",
]
