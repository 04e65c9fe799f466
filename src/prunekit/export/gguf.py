"""Write a (pruned or structurally shrunk) Llama-family model to a GGUF file that llama.cpp-based runtimes
run and transformers reads back (``gguf_file=``), with the ``gguf`` package's writer.

What goes in: the architecture metadata taken from the model as it is now (``feed_forward_length``,
head counts and ``key_length`` follow structured pruning), the tokenizer (copied from the source GGUF
when there is one, else built from the Hugging Face tokenizer), and every tensor in the chosen type:
1-D tensors (norms) in F32, 2-D ones in ``quant`` (F16 where a row does not divide into the type's
blocks). Q and K are permuted to llama.cpp's rotary layout, as its own converter does.

:func:`plan_gguf` does every check before anything is written: an architecture outside the Llama family,
a type the writer cannot produce, per-layer widths that GGUF's single width per model cannot describe,
biases or rotary scalings that the metadata would lose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gguf
import numpy as np
import torch
from torch import Tensor, nn

from .gguf_vocab import VocabPlan, add_vocab, vocab_from_gguf, vocab_from_tokenizer

Q = gguf.GGMLQuantizationType
QUANTS: dict[str, Q] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0,
                        "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
QUANT_CHOICES = (*QUANTS, "source")
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
              Q.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, Q.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1}
ARCHITECTURES = {"llama": "llama", "mistral": "llama"}  # HF model_type → GGUF architecture


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"gguf {version('gguf')}"
    except PackageNotFoundError:
        return "gguf"


def _unwritable(name: str) -> ValueError:
    return ValueError(
        f"GGUF type {name!r} cannot be written here: the gguf package ({_gguf_version()}) can write {', '.join(QUANTS)} (and 'source' = the source GGUF's own "
        "types where they are among these). For K-quants write f16 and run llama.cpp's "
        f"'llama-quantize model-f16.gguf model-{name.lower()}.gguf {name.upper()}'")


def parse_quant(name: str) -> str:
    """A GGUF output type name, checked: one of :data:`QUANT_CHOICES` (case-insensitive)."""
    key = str(name).strip().lower()
    if key in QUANT_CHOICES:
        return key
    known = {t.name.lower() for t in Q} | {t.name.removeprefix("MOSTLY_").lower() for t in gguf.LlamaFileType}
    if key in known:
        raise _unwritable(str(name))
    raise ValueError(f"unknown GGUF type {name!r}; expected one of {', '.join(QUANT_CHOICES)}")


@dataclass
class TensorPlan:
    """One tensor: its GGUF name, state-dict key, shape (PyTorch order) and type; ``heads`` > 0 permutes it."""

    name: str
    key: str
    shape: tuple[int, ...]
    qtype: str
    heads: int = 0


@dataclass
class GGUFPlan:
    """Everything the file will hold, decided before writing."""

    architecture: str
    quant: str
    file_type: int
    hparams: dict[str, Any]
    tensors: list[TensorPlan]
    vocab: VocabPlan
    general: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def types(self) -> dict[str, int]:
        """How many tensors of each GGUF type."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.qtype] = out.get(t.qtype, 0) + 1
        return out


@dataclass
class GGUFReport:
    """What was written: the file, its bytes, the type per tensor count, and notes for the user."""

    path: str
    bytes: int
    quant: str
    architecture: str
    hparams: dict[str, Any]
    types: dict[str, int]
    tokenizer: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        types = ", ".join(f"{n} {k}" for k, n in sorted(self.types.items()))
        lines = [f"wrote {self.path}: {self.bytes / 1e6:,.1f} MB, GGUF {self.architecture} {self.quant} ({types}); "
                 f"tokenizer {self.tokenizer}",
                 "  " + ", ".join(f"{k} {v}" for k, v in self.hparams.items())]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _rope(config: Any) -> tuple[float, str, float | None]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None) or {}
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0) or 10000.0))
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    factor = params.get("factor", legacy.get("factor"))
    return theta, kind, factor


def _source_types(source: Path | None) -> dict[str, Q]:
    if source is None:
        return {}
    return {t.name: Q(int(t.tensor_type)) for t in gguf.GGUFReader(str(source)).tensors}


def _source_general(source: Path | None) -> tuple[dict[str, str], int | None]:
    if source is None:
        return {}, None
    reader = gguf.GGUFReader(str(source))
    out = {}
    for key in ("general.name", "general.license", "general.organization", "general.basename"):
        f = reader.fields.get(key)
        if f is not None:
            out[key] = bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    ft = reader.fields.get("general.file_type")
    return out, (int(ft.parts[ft.data[0]][0]) if ft is not None else None)


def _state(model: nn.Module) -> dict[str, Tensor]:
    from ..core.sparse_io import effective_state_dict

    return effective_state_dict(model)


def plan_gguf(model: nn.Module, tokenizer: Any, quant: str = "q8_0", source: str | Path | None = None) -> GGUFPlan:
    """Check that ``model`` can be written to GGUF as ``quant`` and decide every tensor's name and type.

    ``source`` is the GGUF file the model came from (its tokenizer is copied, ``quant="source"`` reuses
    its per-tensor types). Raises a ValueError naming the reason when the model cannot be exported.
    """
    quant = parse_quant(quant)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports the Llama family ({', '.join(ARCHITECTURES)}); this model is "
                         f"{model_type!r}. Save it as safetensors instead (prunekit export --to safetensors)")
    source = Path(source) if source is not None else None
    if quant == "source" and source is None:
        raise ValueError("--quant source needs the GGUF file the model came from, and none is known "
                         "(the folder's prunekit.json names no GGUF source); pick a type: " + ", ".join(QUANTS))
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"GGUF's llama architecture computes SiLU MLPs; this model uses {config.hidden_act!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ValueError(f"config.{flag} is True: GGUF's llama metadata has no key for biases, so "
                             "transformers would drop them when reading the file back")
    theta, rope_kind, rope_factor = _rope(config)
    if rope_kind not in ("default", "linear"):
        raise ValueError(f"rotary scaling {rope_kind!r} is not written by this exporter (default and linear are)")
    state = _state(model)
    n_layer = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_head)
    ff = int(config.intermediate_size)
    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} is odd; rotary embeddings need an even head size")
    expect = {"self_attn.q_proj": (n_head * head_dim, hidden), "self_attn.k_proj": (n_kv * head_dim, hidden),
              "self_attn.v_proj": (n_kv * head_dim, hidden), "self_attn.o_proj": (hidden, n_head * head_dim),
              "mlp.gate_proj": (ff, hidden), "mlp.up_proj": (ff, hidden), "mlp.down_proj": (hidden, ff)}
    for i in range(n_layer):
        for part, shape in expect.items():
            key = f"model.layers.{i}.{part}.weight"
            if key not in state:
                raise ValueError(f"{key} is missing: not a Llama-layout model")
            if tuple(state[key].shape) != shape:
                raise ValueError(
                    f"layer {i}'s {part} is {tuple(state[key].shape)}, but the config (and layer widths elsewhere) "
                    f"say {shape}: GGUF's llama metadata holds one width per model (feed_forward_length "
                    f"{ff}, {n_head} heads, {n_kv} KV heads of {head_dim}), so per-layer widths cannot be exported")
    embed = state.get("model.embed_tokens.weight")
    if embed is None:
        raise ValueError("model.embed_tokens.weight is missing: not a Llama-layout model")
    n_vocab = int(embed.shape[0])
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    src_types = _source_types(source)
    general, src_file_type = _source_general(source)
    notes: list[str] = []
    offset_types: set[str] = set()
    tensors = []
    for key, t in state.items():
        if key == "lm_head.weight" and tied:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{key} has no GGUF llama tensor name; the model has parts GGUF cannot hold")
        if not t.is_floating_point():
            raise ValueError(f"{key} is {t.dtype}; GGUF export expects floating-point weights")
        if t.dim() == 1:
            qtype = Q.F32
        elif quant == "source":
            if name not in src_types:
                raise ValueError(f"{name} is not in the source GGUF, so it has no source type; pick a type")
            qtype = src_types[name]
            if qtype.name.lower() not in QUANTS:
                raise _unwritable(qtype.name)
        else:
            qtype = QUANTS[quant]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if t.dim() > 1 and t.shape[-1] % block:
            notes.append(f"{name}: rows of {t.shape[-1]} do not divide into {qtype.name} blocks of {block}; "
                         "written as F16")
            qtype = Q.F16
        if qtype in (Q.Q4_1, Q.Q5_1) and t.dim() > 1 and float((t == 0).float().mean()) > 0.1:
            offset_types.add(qtype.name)
        heads = n_head if ".attn_q." in f".{name}" else n_kv if ".attn_k." in f".{name}" else 0
        tensors.append(TensorPlan(name, key, tuple(t.shape), qtype.name, heads))
    over = [(t.name, float(state[t.key].detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()))
            for t in tensors if t.qtype == "F16"]
    over = [(n, v) for n, v in over if v > 65504.0]
    if over:
        names = ", ".join(f"{n} (|w| up to {v:.3g})" for n, v in over[:5])
        raise ValueError(f"GGUF type F16: {len(over)} tensor(s) hold values beyond float16's range ±65504, which "
                         f"would become inf (and the file give NaN logits): {names}"
                         f"{f' and {len(over) - 5} more' if len(over) > 5 else ''}. Use --quant bf16 or f32")
    for name in sorted(offset_types):
        notes.append(f"{name} stores each block as scale × q + minimum, so a pruned weight's zeros come back as "
                     "small non-zeros (the sparsity is lost and the error grows); the symmetric types "
                     "(q4_0, q5_0, q8_0) keep zeros exact")
    if not tied and not any(t.name == "output.weight" for t in tensors):
        raise ValueError("the model has no LM head weight (lm_head.weight) and does not tie it to the embedding")
    if source is not None:
        vocab = vocab_from_gguf(source, n_vocab)
    else:
        if tokenizer is None:
            raise ValueError("a GGUF file needs the tokenizer: none was given and no source GGUF is known")
        vocab = vocab_from_tokenizer(tokenizer, n_vocab)
    notes.extend(vocab.notes)
    if getattr(config, "sliding_window", None):
        notes.append(f"sliding_window {config.sliding_window} is not part of GGUF's llama metadata; runtimes "
                     "attend over the whole context")
    hparams = {"block_count": n_layer, "context_length": int(config.max_position_embeddings),
               "embedding_length": hidden, "feed_forward_length": ff, "head_count": n_head, "head_count_kv": n_kv,
               "key_length": head_dim, "value_length": head_dim, "rope_dimension_count": head_dim,
               "rope_freq_base": theta, "layer_norm_rms_epsilon": float(config.rms_norm_eps), "vocab_size": n_vocab}
    if rope_kind == "linear":
        hparams["rope_scaling_linear_factor"] = float(rope_factor)
    if quant == "source":
        file_type = src_file_type if src_file_type is not None else int(gguf.LlamaFileType.MOSTLY_F16)
    else:
        file_type = int(FILE_TYPES[QUANTS[quant]])
    return GGUFPlan(ARCHITECTURES[model_type], quant, file_type, hparams, tensors, vocab, general, notes)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half Q/K rows → llama.cpp's interleaved layout (transformers undoes this on reading)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(data: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None]:
    if qtype == Q.F32:
        return data.astype(np.float32), None
    if qtype == Q.F16:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(model: nn.Module, plan: GGUFPlan, path: str | Path, description: str | None = None,
               progress: bool = False) -> GGUFReport:
    """Write the file ``plan`` describes to ``path`` (the caller makes it atomic)."""
    state = _state(model)
    h = plan.hparams
    writer = gguf.GGUFWriter(str(path), plan.architecture)
    try:
        writer.add_type("model")
        name = plan.general.get("general.name") or str(getattr(model.config, "_name_or_path", "") or "model")
        writer.add_name(name)
        for key in ("general.license", "general.organization", "general.basename"):
            if key in plan.general:
                writer.add_string(key, plan.general[key])
        if description:
            writer.add_description(description)
        writer.add_block_count(h["block_count"])
        writer.add_context_length(h["context_length"])
        writer.add_embedding_length(h["embedding_length"])
        writer.add_feed_forward_length(h["feed_forward_length"])
        writer.add_head_count(h["head_count"])
        writer.add_head_count_kv(h["head_count_kv"])
        writer.add_key_length(h["key_length"])
        writer.add_value_length(h["value_length"])
        writer.add_rope_dimension_count(h["rope_dimension_count"])
        writer.add_rope_freq_base(h["rope_freq_base"])
        if "rope_scaling_linear_factor" in h:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(h["rope_scaling_linear_factor"])
        writer.add_layer_norm_rms_eps(h["layer_norm_rms_epsilon"])
        writer.add_vocab_size(h["vocab_size"])
        writer.add_file_type(plan.file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer, plan.vocab)
        tensors = plan.tensors
        if progress:
            from tqdm import tqdm

            tensors = tqdm(tensors, desc=f"GGUF {plan.quant}", unit="tensor")
        for t in tensors:
            data = state[t.key].detach().to(torch.float32).cpu().numpy()
            if t.heads:
                data = _permute(data, t.heads)
            encoded, raw = _encode(data, Q[t.qtype])
            writer.add_tensor(t.name, encoded, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GGUFReport(str(path), Path(path).stat().st_size, plan.quant, plan.architecture, dict(h), plan.types(),
                      plan.vocab.source, list(plan.notes))


def read_gguf_hparams(path: str | Path) -> dict[str, Any]:
    """The ``<arch>.*`` metadata of a GGUF file, without the architecture prefix (for checks and tests)."""
    reader = gguf.GGUFReader(str(path))
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith(arch + ".") and f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            value = f.parts[f.data[0]]
            out[key[len(arch) + 1:]] = value.tolist()[0] if hasattr(value, "tolist") else value
    return out


def tensor_types(path: str | Path) -> Mapping[str, str]:
    """GGUF tensor name → type name, as written in the file."""
    return {t.name: Q(int(t.tensor_type)).name for t in gguf.GGUFReader(str(path)).tensors}
