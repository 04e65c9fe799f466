"""Write a (pruned or structurally shrunk) Llama-family or Gemma 3 model to a GGUF file that llama.cpp-based
runtimes run and transformers reads back (``gguf_file=``), with the ``gguf`` package's writer.

What goes in: the architecture metadata taken from the model as it is now — head counts and feed-forward
lengths read from each block's weights (never from the config), ``key_length`` from the attention module —,
the tokenizer (copied from the source GGUF while it still fits the embedding, else built from the model's
own Hugging Face tokenizer, e.g. a trimmed one), and every tensor in the chosen type: 1-D tensors (norms) in
F32, 2-D ones in ``quant`` (F16 where a row does not divide into the type's blocks). Q and K are permuted to
llama.cpp's rotary layout for llama/deci, as its own converter does; Gemma's norms are written as 1 + w.

Per-layer (heterogeneous) widths: llama.cpp reads ``head_count``, ``head_count_kv`` and
``feed_forward_length`` as per-layer arrays for every architecture (``get_key_or_arr`` in
``llama_model::load_hparams``), but only some loaders and graphs use them: ``deci``'s takes ``n_head(il)``,
``n_head_kv(il)`` and ``n_ff(il)`` per layer, while ``llama``'s and ``gemma3``'s take layer 0's for every
layer (``LLAMA_LOAD_LOCALS``), so such a file fails their shape checks. A Llama-family model with per-layer
widths is therefore written as ``deci`` (same tensor names and rotary layout); a Gemma 3 one is refused.

:func:`plan_gguf` does every check before anything is written: an architecture llama.cpp cannot run from
this writer, a type the writer cannot produce, per-layer widths the target architecture cannot load,
inconsistent block shapes, biases, rotary scalings or attention settings the metadata would lose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import gguf
import numpy as np
import torch
from torch import Tensor, nn

from .gguf_arch import LayerShape  # noqa: F401 (re-exported)
from .gguf_arch import check_llama, gemma3_hparams, head_dim_of, layer_shapes, rope_settings
from .gguf_vocab import VocabPlan, add_vocab, subset_vocab, vocab_from_gguf, vocab_from_tokenizer
from .quant_names import K_QUANTS

Q = gguf.GGMLQuantizationType
QUANTS: dict[str, Q] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0,
                        "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
QUANT_CHOICES = (*QUANTS, "source")
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
              Q.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, Q.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1}
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "gemma3_text": "gemma3"}  # HF model_type → GGUF architecture
# llama.cpp's architectures that hold per-layer widths: its deci loader and graph read head_count, head_count_kv
# and feed_forward_length per layer (hparams.n_head(il), n_ff(il)); its llama and gemma3 ones read layer 0's for
# every layer (src/models/llama.cpp, gemma3.cpp: LLAMA_LOAD_LOCALS), so such a file would not load.
PER_LAYER = {"llama": "deci"}
ROTATE_HALF_PERMUTED = ("llama", "deci")  # llama.cpp's "normal" rotary: Q/K rows interleaved by its converter


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"gguf {version('gguf')}"
    except PackageNotFoundError:
        return "gguf"


def _unwritable(name: str) -> ValueError:
    return ValueError(
        f"GGUF type {name!r} cannot be written here: the gguf package ({_gguf_version()}) can write {', '.join(QUANTS)} (and 'source' = the source GGUF's own "
        "types where they are among these), and the K-quants (q4_K_M, q6_K, …) through llama.cpp's llama-quantize")


def parse_quant(name: str) -> str:
    """A GGUF output type name, checked: one of :data:`QUANT_CHOICES`, or a K-quant that llama.cpp's
    llama-quantize writes (:mod:`prunekit.export.kquant`), case-insensitive."""
    key = str(name).strip().lower()
    if key in QUANT_CHOICES or key in K_QUANTS:
        return key
    known = {t.name.lower() for t in Q} | {t.name.removeprefix("MOSTLY_").lower() for t in gguf.LlamaFileType}
    if key in known:
        raise _unwritable(str(name))
    raise ValueError(f"unknown GGUF type {name!r}; expected one of {', '.join(QUANT_CHOICES)} or a K-quant "
                     f"({', '.join(K_QUANTS)})")


@dataclass
class TensorPlan:
    """One tensor: its GGUF name, state-dict key, shape (PyTorch order) and type; ``heads`` > 0 permutes it
    (that layer's own head count), ``shift`` is added to it."""

    name: str
    key: str
    shape: tuple[int, ...]
    qtype: str
    heads: int = 0
    shift: float = 0.0  # added before writing (Gemma's norms: llama.cpp multiplies by w, Gemma by 1 + w)


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
    transformers_reads: bool = True  # whether transformers' GGUF reader builds this model back exactly

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


def _vocab(tokenizer: Any, source: Path | None, n_vocab: int, keep: Sequence[int] | None = None) -> VocabPlan:
    """The tokenizer metadata: with ``keep`` (the source ids a trimmed vocabulary kept) the source GGUF's fields
    cut to them; else the source's own fields when they describe this embedding (same token count, and the
    given tokenizer, if any, has as many tokens); else built from ``tokenizer`` — the tokenizer of the model
    being exported."""
    if keep is not None:
        if source is None:
            raise ValueError("a trimmed vocabulary's kept ids were given but no source GGUF to cut the tokenizer from")
        plan = subset_vocab(vocab_from_gguf(source, None), list(keep))
        if plan.tokens != n_vocab:
            raise ValueError(f"the trimmed vocabulary keeps {plan.tokens} tokens but the model's embedding has "
                             f"{n_vocab} rows; llama.cpp needs them equal")
        return plan
    if source is not None:
        try:
            plan = vocab_from_gguf(source, n_vocab)
        except ValueError:
            if tokenizer is None:
                raise
        else:
            if tokenizer is None or len(tokenizer) == plan.tokens:
                return plan
    if tokenizer is None:
        raise ValueError("a GGUF file needs the tokenizer: none was given and no source GGUF is known")
    return vocab_from_tokenizer(tokenizer, n_vocab)


def plan_gguf(model: nn.Module, tokenizer: Any, quant: str = "q8_0", source: str | Path | None = None,
              keep: Sequence[int] | None = None) -> GGUFPlan:
    """Check that ``model`` can be written to GGUF as ``quant`` and decide every tensor's name and type.

    ``source`` is the GGUF file the model came from (its tokenizer is copied when it still fits the
    embedding and ``tokenizer``, or cut to ``keep``, the source ids a trimmed vocabulary kept; ``quant="source"``
    reuses its per-tensor types). Per-layer widths (read
    from the weights) are written as arrays under llama.cpp's ``deci`` architecture, the one whose loader and
    graph read a head count, KV head count and feed-forward length per layer. Raises a ValueError naming
    the reason when the model cannot be exported; nothing is written here.
    """
    quant = parse_quant(quant)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports {', '.join(ARCHITECTURES)} (llama.cpp's llama, deci and gemma3 "
                         f"graphs); this model is {model_type!r}. Save it as safetensors instead "
                         "(prunekit export --to safetensors)")
    source = Path(source) if source is not None else None
    if quant == "source" and source is None:
        raise ValueError("--quant source needs the GGUF file the model came from, and none is known "
                         "(the folder's prunekit.json names no GGUF source); pick a type: " + ", ".join(QUANTS))
    arch = ARCHITECTURES[model_type]
    if arch == "llama":
        check_llama(config)
        theta, rope_kind, rope_factor = rope_settings(config)
        if rope_kind not in ("default", "linear"):
            raise ValueError(f"rotary scaling {rope_kind!r} is not written by this exporter (default and linear are)")
        extra: dict[str, Any] = {"rope_freq_base": theta}
        if rope_kind == "linear":
            extra["rope_scaling_linear_factor"] = float(rope_factor)
    else:
        extra = gemma3_hparams(config)
    state = _state(model)
    n_layer = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    head_dim = head_dim_of(model, config)
    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} is odd; rotary embeddings need an even head size")
    shapes = layer_shapes(state, n_layer, hidden, head_dim)
    per_layer = len(set(shapes)) > 1
    if per_layer:
        if arch not in PER_LAYER:
            widths = ", ".join(f"{s.heads}/{s.kv_heads} heads, ff {s.ff}" for s in shapes[:4])
            raise ValueError(f"this {model_type} model has per-layer widths ({widths}, ...), but llama.cpp's {arch} "
                             "loader reads one width per model (only its deci architecture, for Llama-family "
                             "models, reads them per layer); export a uniform shape")
        arch = PER_LAYER[arch]
    embed = state.get("model.embed_tokens.weight")
    if embed is None:
        raise ValueError("model.embed_tokens.weight is missing: not a Llama-layout model")
    n_vocab = int(embed.shape[0])
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    src_types = _source_types(source)
    general, src_file_type = _source_general(source)
    notes: list[str] = []
    offset_types: set[str] = set()
    unblocked: dict[tuple[int, str, int], list[str]] = {}  # (row length, type, block) → tensors written as F16
    tensors = []
    for key, t in state.items():
        if key == "lm_head.weight" and tied:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{key} has no GGUF {arch} tensor name; the model has parts GGUF cannot hold")
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
            unblocked.setdefault((int(t.shape[-1]), qtype.name, block), []).append(name)
            qtype = Q.F16
        if qtype in (Q.Q4_1, Q.Q5_1) and t.dim() > 1 and float((t == 0).float().mean()) > 0.1:
            offset_types.add(qtype.name)
        heads = 0
        if arch in ROTATE_HALF_PERMUTED and name.startswith("blk."):
            layer = shapes[int(name.split(".")[1])]
            heads = layer.heads if ".attn_q." in name else layer.kv_heads if ".attn_k." in name else 0
        shift = 1.0 if arch == "gemma3" and key.endswith("norm.weight") else 0.0
        tensors.append(TensorPlan(name, key, tuple(t.shape), qtype.name, heads, shift))
    for (cols, qname, block), which in unblocked.items():
        notes.append(f"{len(which)} tensor(s) with rows of {cols} ({', '.join(which[:2])}{', …' if len(which) > 2 else ''}) "
                     f"do not divide into {qname} blocks of {block}, so they are written as F16 (larger and slower "
                     f"than {qname}); widths that are multiples of {block} keep them {qname}")
    over = [(t.name, float(state[t.key].detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()))
            for t in tensors if t.qtype == "F16"]
    over = [(n, v) for n, v in over if v > 65504.0]
    if over:
        listed = ", ".join(f"{n} (|w| up to {v:.3g})" for n, v in over[:5])
        raise ValueError(f"GGUF type F16: {len(over)} tensor(s) hold values beyond float16's range ±65504, which "
                         f"would become inf (and the file give NaN logits): {listed}"
                         f"{f' and {len(over) - 5} more' if len(over) > 5 else ''}. Use --quant bf16 or f32")
    for name in sorted(offset_types):
        notes.append(f"{name} stores each block as scale × q + minimum, so a pruned weight's zeros come back as "
                     "small non-zeros (the sparsity is lost and the error grows); the symmetric types "
                     "(q4_0, q5_0, q8_0) keep zeros exact")
    if not tied and not any(t.name == "output.weight" for t in tensors):
        raise ValueError("the model has no LM head weight (lm_head.weight) and does not tie it to the embedding")
    vocab = _vocab(tokenizer, source, n_vocab, keep)
    notes.extend(vocab.notes)
    if arch != "gemma3" and getattr(config, "sliding_window", None):
        notes.append(f"sliding_window {config.sliding_window} is not part of GGUF's llama metadata; runtimes "
                     "attend over the whole context")
    if per_layer:
        notes.append(f"per-layer widths written as GGUF arrays under llama.cpp's 'deci' architecture (llama.cpp "
                     "reads them; transformers' GGUF reader does not build such a model)")
    hparams: dict[str, Any] = {
        "block_count": n_layer, "context_length": int(config.max_position_embeddings), "embedding_length": hidden,
        "feed_forward_length": [s.ff for s in shapes] if per_layer else shapes[0].ff,
        "head_count": [s.heads for s in shapes] if per_layer else shapes[0].heads,
        "head_count_kv": [s.kv_heads for s in shapes] if per_layer else shapes[0].kv_heads,
        "key_length": head_dim, "value_length": head_dim, "rope_dimension_count": head_dim,
        "layer_norm_rms_epsilon": float(config.rms_norm_eps), "vocab_size": n_vocab, **extra}
    if quant == "source":
        file_type = src_file_type if src_file_type is not None else int(gguf.LlamaFileType.MOSTLY_F16)
    else:
        file_type = int(FILE_TYPES[QUANTS[quant]])
    readable = _transformers_reads(arch, config, hparams)
    if arch == "gemma3" and not readable:
        notes.append("transformers' GGUF reader rebuilds Gemma 3 with query_pre_attn_scalar 256 and every 6th layer "
                     "global, which this model's config does not match: the file was checked tensor by tensor "
                     "(llama.cpp reads the per-layer sliding pattern and scales by 1/sqrt(head_dim))")
    return GGUFPlan(arch, quant, file_type, hparams, tensors, vocab, general, notes, readable)


def _transformers_reads(arch: str, config: Any, hparams: Mapping[str, Any]) -> bool:
    """Whether transformers' GGUF reader builds the same model from the file: not for ``deci`` (no such
    model class), and for ``gemma3`` only where the config is what its reader assumes (it reads neither
    query_pre_attn_scalar, taking 256, nor the sliding pattern, taking every 6th layer global)."""
    if arch == "deci":
        return False
    if arch == "gemma3":
        pattern = hparams.get("sliding_window_pattern")
        default = [bool((i + 1) % 6) for i in range(int(hparams["block_count"]))]
        return int(getattr(config, "query_pre_attn_scalar", 256) or 256) == 256 and pattern in (None, default)
    return True


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half Q/K rows → llama.cpp's interleaved layout (transformers undoes this on reading)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_hparams(writer: gguf.GGUFWriter, h: Mapping[str, Any]) -> None:
    """The ``<arch>.*`` keys; head counts and feed-forward lengths as arrays where they are per layer."""
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
    if "sliding_window" in h:
        writer.add_sliding_window(h["sliding_window"])
        writer.add_sliding_window_pattern(h["sliding_window_pattern"])
        writer.add_rope_freq_base_swa(h["rope_freq_base_swa"])
    if "final_logit_softcapping" in h:
        writer.add_final_logit_softcapping(h["final_logit_softcapping"])
    writer.add_layer_norm_rms_eps(h["layer_norm_rms_epsilon"])
    writer.add_vocab_size(h["vocab_size"])


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
        _add_hparams(writer, h)
        writer.add_file_type(plan.file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer, plan.vocab)
        tensors = plan.tensors
        if progress:
            from tqdm import tqdm

            tensors = tqdm(tensors, desc=f"GGUF {plan.quant}", unit="tensor")
        for t in tensors:
            data = state[t.key].detach().to(torch.float32).cpu().numpy()
            if t.shift:
                data = data + np.float32(t.shift)
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
    """The ``<arch>.*`` metadata of a GGUF file, without the architecture prefix (arrays as lists)."""
    reader = gguf.GGUFReader(str(path))
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if not key.startswith(arch + ".") or not f.types:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            out[key[len(arch) + 1:]] = [f.parts[i].tolist()[0] for i in f.data]
        else:
            value = f.parts[f.data[0]]
            out[key[len(arch) + 1:]] = value.tolist()[0] if hasattr(value, "tolist") else value
    return out


def tensor_types(path: str | Path) -> Mapping[str, str]:
    """GGUF tensor name → type name, as written in the file."""
    return {t.name: Q(int(t.tensor_type)).name for t in gguf.GGUFReader(str(path)).tensors}
