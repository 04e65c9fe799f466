"""Training with pruning: loops, schedules, lottery tickets, sparse training, soups and recovery.

The trainer callbacks load their framework only when asked for:
``prunekit.train.GradualPruningCallback`` (transformers) and ``prunekit.train.LightningGradualPruning``.
"""

from .adamr import AdamR, AdamRConfig
from .gradual import Gradual
from .loop import fit, steps_per_run
from .loraprune import LoRAPruneConfig, LoRAPruneReport, loraprune_
from .recovery import RecoveryReport, add_lora_, bias_and_norm_params, kd_loss, merge_lora_, recover_, trainable_params_
from .recovery_lm import RECOVERY, LMRecoveryReport, RecoveryConfig, recover_lm_
from .schedule import SCHEDULES, constant, cubic, linear, sparsity_at
from .shrink import SoftShrink
from .soup import Soup, average_models, sparse_soup
from .sparse import SET, DynamicSparse, GraNet, RigL, sparse_init_
from .ticket import Ticket, TicketSearch, find_ticket, find_ticket_

__all__ = [
    "AdamR", "AdamRConfig", "LMRecoveryReport", "LoRAPruneConfig", "LoRAPruneReport", "RECOVERY", "RecoveryConfig", "loraprune_", "recover_lm_",
    "trainable_params_",
    "SCHEDULES", "SET", "DynamicSparse", "GraNet", "Gradual", "GradualPruningCallback", "LightningGradualPruning",
    "RecoveryReport", "RigL", "SoftShrink", "Soup", "Ticket", "TicketSearch", "add_lora_", "average_models",
    "bias_and_norm_params", "constant", "cubic", "find_ticket", "find_ticket_", "fit", "kd_loss", "linear", "merge_lora_", "recover_",
    "sparse_init_", "sparse_soup", "sparsity_at", "steps_per_run",
]


def __getattr__(name: str):
    if name == "GradualPruningCallback":
        from .hf_callback import GradualPruningCallback

        return GradualPruningCallback
    if name == "LightningGradualPruning":
        from .lightning_callback import LightningGradualPruning

        return LightningGradualPruning
    raise AttributeError(f"module 'prunekit.train' has no attribute {name!r}")
