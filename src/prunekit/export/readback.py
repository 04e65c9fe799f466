"""Read a saved artifact back the way its user will, before anything reports it saved.

A folder is loaded with this environment's stock ``from_pretrained`` (``AutoModelForCausalLM`` for a
causal LM, else the model's own class); a GGUF file with transformers' GGUF reader (``gguf_file=``).
The loaded model's logits on a fixed run of token ids are compared with the in-memory model's logits,
computed with its weights rounded exactly as the file stores them (cast to the save dtype, or through
the GGUF block type and back). The two sides then hold the same numbers, so what is left is float32
summation order — and anything a reader builds differently (a RoPE base read as 10000, weights left
random because a layout is not read, another dtype). See :func:`tolerance` for the bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..models.shrunk import CONFIG_KEY, load_shrunk

PROBE_TOKENS = 64
_PARAM_OF_MASK = re.compile(r"parametrizations\.(\w+)\.original\d*$")


class ReadBackError(RuntimeError):
    """The artifact was written, but the stock reader does not give back the model: nothing is reported
    saved (the caller's temporary output is removed)."""


@dataclass
class ReadBack:
    """How a written artifact read back: the reader (with versions), the probe, the largest logit gap."""

    reader: str
    tokens: int
    max_abs_diff: float
    tolerance: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        return (f"read back with {self.reader}: max |Δ logit| {self.max_abs_diff:.2e} over {self.tokens} tokens "
                f"(tolerance {self.tolerance:.1e})")


def versions() -> str:
    """``transformers X, compressed-tensors Y`` as installed here (what a read-back was done with)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("transformers", "compressed-tensors", "gguf"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_kwarg(dtype: torch.dtype | str) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype=`` since transformers 4.56, ``torch_dtype=`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def probe_ids(model: nn.Module, tokens: int = PROBE_TOKENS) -> Tensor:
    """A fixed run of token ids (seeded, in the vocabulary, within the context): long enough that the
    rotary base shows (a wrong base moves later positions most)."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "num_embeddings", None):
        vocab = min(vocab or emb.num_embeddings, emb.num_embeddings)
    context = int(getattr(config, "max_position_embeddings", tokens) or tokens)
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, max(vocab, 1), (1, min(tokens, context)), generator=gen)


def tolerance(reference: Tensor, hidden: int, layers: int) -> float:
    """The largest logit gap two float32 runs of the same weights may show: unit roundoff (2⁻²⁴) times
    √(length of the longest sum, the hidden width) — rounding errors of a sum grow as √n, Higham's
    probabilistic bound — times the number of blocks they pass, times the logits' scale, with a factor 64
    for kernels that block their sums differently (SDPA vs eager, BLAS). Rounding to the save dtype is
    not in it: both sides hold the rounded weights. SmolLM2-135M: 0.08, where a RoPE base read as 10000
    moves the logits by 16 and random weights by more."""
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    return 64 * 2.0 ** -24 * math.sqrt(max(hidden, 1)) * max(layers, 1) * max(scale, 1.0)


def _rounded_params(model: nn.Module, round_: Callable[[str, Tensor], Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, p in model.named_parameters():
        key = _PARAM_OF_MASK.sub(r"\1", name)
        out[name] = round_(key, p.detach()) if p.is_floating_point() else p.detach()
    return out


def reference_logits(model: nn.Module, ids: Tensor, round_: Callable[[str, Tensor], Tensor] | None = None) -> Tensor:
    """The in-memory model's float32 logits of ``ids``, its weights passed through ``round_(key, tensor)``
    (key: the state-dict name of the weight) for this call only; the model is not changed."""
    from torch.func import functional_call

    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if round_ is None:
                out = model(ids.to(device), **_extra_inputs(model, ids.to(device)))
            else:
                out = functional_call(model, _rounded_params(model, round_), (ids.to(device),),
                                      _extra_inputs(model, ids.to(device)))
    finally:
        model.train(training)
    return (out.logits if hasattr(out, "logits") else out[0]).float().cpu()


def _extra_inputs(model: nn.Module, ids: Tensor) -> dict[str, Tensor]:
    """An encoder-decoder also needs decoder ids: the same run of tokens."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return {"decoder_input_ids": ids}
    return {}


def _stock_class(model: nn.Module):
    import transformers

    auto = transformers.AutoModelForCausalLM
    if type(model) in auto._model_mapping.values():
        return auto, "AutoModelForCausalLM"
    return type(model), type(model).__name__


def _tied(model: nn.Module) -> set[str]:
    tied = set()
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        tied.add("lm_head.weight")
    return tied


def _compare(model: nn.Module, loaded: nn.Module, ids: Tensor, round_, reader: str,
             notes: list[str]) -> ReadBack:
    try:
        expected = reference_logits(model, ids, round_)
    except (TypeError, ValueError):  # a forward that needs more than token ids: compare the weights
        return _compare_weights(model, loaded, round_, reader, notes)
    with torch.no_grad():
        out = loaded.eval()(ids, **_extra_inputs(loaded, ids))
    got = (out.logits if hasattr(out, "logits") else out[0]).float().cpu()
    config = model.config
    tol = tolerance(expected, int(getattr(config, "hidden_size", 0) or 0),
                    int(getattr(config, "num_hidden_layers", 0) or 0))
    if got.shape != expected.shape:
        return ReadBack(reader, ids.shape[-1], math.inf, tol, notes + [f"logits shape {tuple(got.shape)} "
                                                                       f"instead of {tuple(expected.shape)}"])
    diff = float((got - expected).abs().max()) if got.numel() else 0.0
    return ReadBack(reader, ids.shape[-1], diff if math.isfinite(diff) else math.inf, tol, notes)


def _compare_weights(model: nn.Module, loaded: nn.Module, round_, reader: str, notes: list[str]) -> ReadBack:
    """Every weight of ``loaded`` equal to ``model``'s rounded one (no summation: bit equality is the
    right test); ``max_abs_diff`` is the largest weight gap, ``tokens`` 0."""
    from ..core.sparse_io import effective_state_dict

    ours = effective_state_dict(model)
    theirs = loaded.state_dict()
    diff = 0.0
    for key, t in ours.items():
        if key not in theirs:
            continue
        other = theirs[key].detach().cpu()
        if other.shape != t.shape:
            notes.append(f"{key} is {tuple(other.shape)} instead of {tuple(t.shape)}")
            diff = math.inf
            continue
        if t.is_floating_point():
            gap = float((other.float() - round_(key, t.detach().cpu()).float()).abs().max()) if t.numel() else 0.0
            diff = max(diff, gap if math.isfinite(gap) else math.inf)
    return ReadBack(reader + ", weights compared", 0, diff, 0.0, notes)


def _fail(what: str, path: Path, rb: ReadBack, hint: str = "") -> ReadBackError:
    extra = f" ({'; '.join(rb.notes)})" if rb.notes else ""
    return ReadBackError(
        f"{what} was written but does not read back as the model: {rb}{extra}; nothing was saved at {path}. "
        f"{hint}".strip())


def read_back_folder(model: nn.Module, folder: str | Path, dtype: torch.dtype, *, target: str | Path | None = None,
                     hint: str = "") -> ReadBack:
    """Load ``folder`` with this environment's stock ``from_pretrained`` (float32; a per-layer shrunk model with
    :func:`prunekit.models.shrunk.load_shrunk`, which no stock reader replaces) and compare its logits
    with ``model``'s (weights rounded to ``dtype``); raises :class:`ReadBackError` when a weight is
    missing or the logits differ beyond :func:`tolerance`. ``target`` is the path named in the error."""
    folder = Path(folder)
    cls, name = _stock_class(model)
    reader = f"{name}.from_pretrained ({versions()})"
    if getattr(getattr(model, "config", None), CONFIG_KEY, None) is not None:
        # per-layer shapes (prunekit.shrink): no stock reader builds them; prunekit's loader, strict on every tensor
        cls, reader = None, f"prunekit.shrink.load_shrunk ({versions()})"
    try:
        if cls is None:
            loaded, info = load_shrunk(folder, dtype=torch.float32), {}
        else:
            loaded, info = cls.from_pretrained(str(folder), output_loading_info=True, **dtype_kwarg(torch.float32))
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the folder does not load
        raise ReadBackError(f"the folder was written but {reader} cannot load it: {' '.join(str(exc).split())[:400]}; "
                            f"nothing was saved at {target or folder}") from exc
    missing = [k for k in info.get("missing_keys", ()) if k not in _tied(model)]
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())]
    notes = []
    if missing:
        notes.append(f"{len(missing)} weights missing and left random, e.g. {', '.join(sorted(missing)[:3])}")
    if mismatched:
        notes.append(f"{len(mismatched)} weights of another shape, e.g. {', '.join(sorted(mismatched)[:3])}")
    round_ = lambda _k, t: t.to(dtype).to(t.dtype)  # noqa: E731
    if getattr(model, "main_input_name", "input_ids") == "input_ids":
        rb = _compare(model, loaded, probe_ids(model), round_, reader, notes)
    else:  # no token ids to run (an image model): the weights themselves, exactly
        rb = _compare_weights(model, loaded, round_, reader, notes)
    del loaded
    if missing or mismatched:
        rb.max_abs_diff = math.inf if not math.isfinite(rb.max_abs_diff) else max(rb.max_abs_diff, rb.tolerance * 2)
    if not rb.ok:
        raise _fail(f"the folder ({dtype_name(dtype)})", Path(target or folder), rb, hint)
    return rb


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gguf_round(plan: Any) -> Callable[[str, Tensor], Tensor]:
    """``round_(key, tensor)``: a weight as the GGUF ``plan`` stores it, read back (quantized blocks and back)."""
    import gguf

    types = {t.key: gguf.GGMLQuantizationType[t.qtype] for t in plan.tensors}
    Q = gguf.GGMLQuantizationType

    def round_(key: str, t: Tensor) -> Tensor:
        qtype = types.get(key)
        if qtype is None or qtype == Q.F32:
            return t
        data = t.detach().to(torch.float32).cpu().numpy()
        if qtype == Q.F16:
            back = data.astype("float16").astype("float32")
        else:
            back = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).reshape(data.shape)
        return torch.from_numpy(back).to(t.dtype)

    return round_


def read_back_gguf(model: nn.Module, path: str | Path, plan: Any, *, target: str | Path | None = None,
                   round_: Callable[[str, Tensor], Tensor] | None = None) -> ReadBack:
    """Load the GGUF file ``path`` with transformers' GGUF reader (float32) and compare its logits with
    ``model``'s (weights through ``plan``'s block types, or ``round_(key, weight)`` where given: the weights as
    the file stores them); raises :class:`ReadBackError` when they differ."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    reader = f"AutoModelForCausalLM.from_pretrained(gguf_file=) ({versions()})"
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      **dtype_kwarg(torch.float32))
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file does not load
        raise ReadBackError(f"the GGUF file ({plan.quant}) was written but {reader} cannot load it: "
                            f"{' '.join(str(exc).split())[:400]}; nothing was saved at {target or path}") from exc
    rb = _compare(model, loaded, probe_ids(model), round_ or gguf_round(plan), reader, [])
    del loaded
    if not rb.ok:
        raise _fail(f"the GGUF file ({plan.quant})", Path(target or path), rb)
    return rb


def file_tensors(path: str | Path, plan: Any, where: str | Path | None = None) -> dict[str, tuple[str, Tensor]]:
    """Every tensor of ``plan`` as the GGUF file ``path`` stores it, in the model's layout: state-dict key →
    (stored type name, the tensor dequantized with the ``gguf`` package, the writer's rotary permutation undone
    and its shift taken off). A tensor the file lacks is a :class:`ReadBackError` naming ``where`` (the target)."""
    import gguf
    import numpy as np

    found = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    out = {}
    for t in plan.tensors:
        if t.name not in found:
            raise ReadBackError(f"the GGUF file ({plan.quant}) was written without {t.name}; nothing was saved at "
                                f"{where or path}")
        qtype = gguf.GGMLQuantizationType(int(found[t.name].tensor_type))
        data = np.asarray(gguf.quants.dequantize(found[t.name].data, qtype), dtype=np.float32).reshape(t.shape)
        if t.heads:  # the inverse of gguf._permute
            data = data.reshape(t.heads, data.shape[0] // t.heads // 2, 2, *data.shape[1:]).swapaxes(1, 2).reshape(t.shape)
        out[t.key] = (qtype.name, torch.from_numpy(data.copy()) - t.shift)
    return out


def check_widths(path: str | Path, plan: Any, where: str | Path) -> None:
    """The GGUF file's head counts and feed-forward lengths (per layer, or one for all) equal to the plan's; a
    :class:`ReadBackError` naming ``where`` otherwise."""
    from .gguf import read_gguf_hparams

    hp = read_gguf_hparams(path)
    for key in ("head_count", "head_count_kv", "feed_forward_length"):
        got = hp.get(key if key == "feed_forward_length" else f"attention.{key}")
        if got != plan.hparams[key]:
            raise ReadBackError(f"the GGUF file ({plan.quant}) holds {key} {got}, not {plan.hparams[key]}; nothing was "
                                f"saved at {where}")


def read_back_gguf_tensors(model: nn.Module, path: str | Path, plan: Any, *, target: str | Path | None = None) -> dict:
    """For GGUF architectures transformers cannot build (llama.cpp's ``deci``, per-layer widths): read every
    tensor back with the ``gguf`` package, undo the writer's permutation and shift, and require it equal to
    the model's weight as the plan stores it (the same quantize → dequantize, so equal bit for bit), and the
    file's per-layer metadata equal to the plan's. Raises :class:`ReadBackError` otherwise."""
    from ..core.sparse_io import effective_state_dict

    where = target or path
    stored = file_tensors(path, plan, where)
    state = effective_state_dict(model)
    round_ = gguf_round(plan)
    worst = 0.0
    for t in plan.tensors:
        back = stored[t.key][1]
        want = round_(t.key, state[t.key].detach()).to(torch.float32)
        # (w + shift) - shift in float32 differs from w by at most one rounding of |w + shift|
        allowed = (t.shift and float(2.0 ** -23 * (want.abs() + abs(t.shift)).max())) or 0.0
        gap = float((back - want).abs().max()) if want.numel() else 0.0
        worst = max(worst, gap)
        if not gap <= allowed:
            raise ReadBackError(f"the GGUF file ({plan.quant}) was written but its {t.name} reads back {gap:.3g} away "
                                f"from the weight; nothing was saved at {where}")
    check_widths(path, plan, where)
    return {"note": f"read back with gguf.GGUFReader: {len(plan.tensors)} tensors equal to the weights as stored "
                    f"(max |Δ| {worst:.1e}) and the per-layer widths as planned (transformers' GGUF reader does "
                    f"not rebuild this {plan.architecture} file exactly)"}
