"""The report every token patch returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TokenReport:
    """What a token patch did: the method and its settings, the family and modules patched, and the
    tokens entering each layer (and leaving the last) for the nominal input length."""

    method: str
    family: str
    model: str
    patched: list[str]
    config: dict[str, Any]
    attention: str
    protected: int = 0
    input_tokens: int | None = None
    tokens_per_layer: list[int] | None = None
    output_tokens: int | None = None
    kv_cache_fraction: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        head = (f"{self.method} on {self.family} ({self.model}): {len(self.patched)} modules patched, "
                f"attention kept as {self.attention}")
        lines = [head]
        if self.tokens_per_layer is not None:
            shown = " → ".join(str(t) for t in self.tokens_per_layer)
            lines.append(f"  tokens per layer ({self.input_tokens}-token input): {shown}; output {self.output_tokens} tokens")
        else:
            lines.append("  tokens per layer: depend on the input length (pass seq_len=… to see them)")
        if self.kv_cache_fraction is not None:
            lines.append(f"  KV cache after prefill: {self.kv_cache_fraction:.1%} of the full prompt's")
        if self.protected:
            lines.append(f"  {self.protected} leading token(s) protected (class/distillation/register)")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
