"""The public verbs: :func:`merge_`, :func:`prune_`, :func:`apply_`, :func:`unpatch_`, and the
registry of token methods with their configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from torch import nn

from ..core.config import Config, ConfigError
from ..core.fraction import check_fraction
from ..core.registry import Registry
from .config import ClsAttentionConfig, FastVConfig, MeanAttentionConfig, RandomPruneConfig, ToMeConfig, ZeroTPruneConfig
from .decoders import DecoderLayerForward, FastVRuntime, check_decoder, install_fastv, prompt_kept
from .encoder_patch import Capture, EncoderLayerForward, EncoderRuntime, LayerPlan, planned_tokens
from .encoders import EncoderSite, UnsupportedModel, find_decoder_layers, find_encoder, is_generative
from .matching import max_merge
from .patching import Patch, PatchRecord, attach, find_patched
from .report import TokenReport

TOKEN_METHODS: Registry = Registry("token method", key="method")

_WRAPPERS = (EncoderLayerForward, DecoderLayerForward, Capture)


@dataclass
class UnpatchReport:
    """What :func:`unpatch_` undid."""

    method: str
    family: str
    model: str
    attributes_restored: int

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"unpatched {self.method} from {self.family} ({self.model}): "
                f"{self.attributes_restored} attributes restored to the original objects")


def _refuse_if_patched(model: nn.Module) -> None:
    found = find_patched(model)
    if found is not None:
        where = f" (on {found[0]!r})" if found[0] else ""
        raise ValueError(f"{type(model).__name__} is already token-patched with {found[1].method!r}{where}; "
                         "call prunekit.tokens.unpatch_(model) first — patches do not stack")
    for name, module in model.named_modules():
        if isinstance(module.__dict__.get("forward"), _WRAPPERS):
            raise ValueError(f"module {name!r} of {type(model).__name__} is already token-patched through an enclosing "
                             "model; unpatch that model first")


def _attention_name(site: EncoderSite) -> str:
    if site.family == "timm-vit":
        fused = all(getattr(layer.attn, "fused_attn", False) for layer in site.layers)
        return "fused scaled_dot_product_attention (timm fused_attn)" if fused else "timm's unfused attention (fused_attn=False)"
    impl = getattr(site.owner.config, "_attn_implementation", None) or "eager"
    return f"transformers {impl!r}"


def _full_name(model: nn.Module, site_name: str) -> str:
    return type(model).__name__ + (f".{site_name}" if site_name else "")


def max_uniform_r(layers: int, tokens: int, protected: int) -> int:
    """The largest ``r`` that every one of ``layers`` layers can merge, from ``tokens`` input tokens."""
    for r in range(max_merge(tokens, protected), -1, -1):
        t = tokens
        ok = True
        for _ in range(layers):
            if r > max_merge(t, protected):
                ok = False
                break
            t -= r
        if ok:
            return r
    return 0


# --- encoders -----------------------------------------------------------------------------------
def _merge_plan(cfg: ToMeConfig, site: EncoderSite, tokens: int | None) -> list[LayerPlan]:
    n = len(site.layers)
    rs = cfg.r if isinstance(cfg.r, list) else [cfg.r] * n
    if len(rs) != n:
        raise ValueError(f"r has {len(rs)} values but the encoder has {n} layers; give one r, or one per layer")
    if tokens is not None:
        t = tokens
        for i, r in enumerate(rs):
            limit = max_merge(t, site.protected)
            if r > limit:
                best = max_uniform_r(n, tokens, site.protected)
                raise ValueError(
                    f"r={cfg.r} is too large: layer {i} receives {t} tokens ({site.protected} protected) and can merge at "
                    f"most {limit} of them (half of the unprotected ones). For this {tokens}-token input the largest "
                    f"uniform r is {best}; pass a smaller r or one r per layer")
            t -= r
    return [LayerPlan("merge" if r > 0 else None, r=r) for r in rs]


def _default_prune_layers(n: int) -> list[int]:
    return sorted({max(0, min(n - 1, i)) for i in (n // 4, n // 2, (3 * n) // 4)})


def _prune_plan(cfg: Config, site: EncoderSite) -> list[LayerPlan]:
    n = len(site.layers)
    layers = cfg.layers if cfg.layers is not None else _default_prune_layers(n)
    bad = [i for i in layers if i >= n]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the encoder has {n} layers (0 … {n - 1})")
    keeps = cfg.keep if isinstance(cfg.keep, list) else [cfg.keep] * len(layers)
    if len(keeps) != len(layers):
        raise ValueError(f"keep has {len(keeps)} values for {len(layers)} pruning layers {layers}; give one keep, or one per layer")
    plan = [LayerPlan() for _ in range(n)]
    for i, k in zip(layers, keeps):
        its = getattr(cfg, "iterations", None) or (30 if i < 3 else (1 if i >= n - 3 else 10))
        plan[i] = LayerPlan("prune", keep=k, iterations=its, tol=getattr(cfg, "tol", 0.0))
    return plan


def _install_encoder(model: nn.Module, site: EncoderSite, cfg: Config, plan: list[LayerPlan], seq_len: int | None) -> TokenReport:
    is_merge = cfg.method == "tome"
    if is_merge:
        restore = cfg.unmerge if cfg.unmerge is not None else site.pooling in ("avg", "sequence")
    else:
        restore = cfg.restore if cfg.restore is not None else site.pooling == "sequence"
    rt = EncoderRuntime(site=site, plan=plan, method=cfg.method, prop_attn=getattr(cfg, "prop_attn", True),
                        restore_output=restore, seed=getattr(cfg, "seed", 0))
    record = PatchRecord()
    patched: list[str] = []
    prefix = f"{site.owner_name}." if site.owner_name else ""
    layer_names = {id(m): n for n, m in site.owner.named_modules()}
    try:
        for i, layer in enumerate(site.layers):
            record.set(layer, "forward", EncoderLayerForward(rt, i, layer))
            patched.append(prefix + layer_names.get(id(layer), f"layer{i}"))
            step = plan[i]
            if step.action is None or cfg.method == "random":
                continue
            q_mod, k_mod = site.adapter.qk_modules(layer)
            record.set(k_mod, "forward", Capture(rt, i, "k", k_mod.forward))
            patched.append(prefix + layer_names.get(id(k_mod), f"layer{i}.k"))
            if step.action == "prune":
                record.set(q_mod, "forward", Capture(rt, i, "q", q_mod.forward))
                patched.append(prefix + layer_names.get(id(q_mod), f"layer{i}.q"))
        tokens = site.tokens if site.tokens is not None else seq_len
        per_layer = planned_tokens(plan, tokens, site.protected) if tokens is not None else None
        notes = []
        if is_merge:
            notes.append("bipartite soft matching on the keys (mean over heads), size-weighted merges"
                         + (", proportional attention (+log size) as an additive mask" if rt.prop_attn else ""))
        else:
            what = {"attention": "Zero-TPrune Weighted PageRank", "mean-attention": "mean attention received",
                    "cls-attention": "the class token's attention (EViT)", "random": "a seeded random ranking"}[cfg.method]
            pruning = [i for i, s in enumerate(plan) if s.action]
            notes.append(f"tokens ranked by {what} at layers {pruning}"
                         + ("; that layer's attention map is recomputed from its q and k beside the fused kernel"
                            if cfg.method in ("attention", "mean-attention") else "")
                         + ("; the class token's attention row is recomputed from q and k beside the fused kernel"
                            if cfg.method == "cls-attention" else ""))
        if site.adapter.kind == "text":
            notes.append("padding tokens go first (they carry no weight) and are masked through the same bias")
        if restore:
            notes.append("the output is brought back to the input length ("
                         + ("each token copied from the token it was merged into)" if is_merge
                            else "dropped tokens keep the hidden state they had when dropped)"))
        report = TokenReport(
            method=cfg.method, family=site.family, model=_full_name(model, site.owner_name), patched=patched,
            config=cfg.to_dict(), attention=_attention_name(site), protected=site.protected, input_tokens=tokens,
            tokens_per_layer=per_layer[:-1] if per_layer else None,
            output_tokens=(tokens if restore else per_layer[-1]) if per_layer else None, notes=notes)
        attach(model, Patch(cfg.method, record, rt, report))
    except Exception:
        record.undo()
        raise
    return report


def _apply_tome(model: nn.Module, cfg: ToMeConfig, seq_len: int | None = None) -> TokenReport:
    site = find_encoder(model)
    tokens = site.tokens if site.tokens is not None else seq_len
    plan = _merge_plan(cfg, site, tokens)
    return _install_encoder(model, site, cfg, plan, seq_len)


def _apply_encoder_prune(model: nn.Module, cfg: Config, seq_len: int | None = None) -> TokenReport:
    site = find_encoder(model)
    plan = _prune_plan(cfg, site)
    return _install_encoder(model, site, cfg, plan, seq_len)


# --- decoders -----------------------------------------------------------------------------------
def _apply_fastv(model: nn.Module, cfg: FastVConfig, seq_len: int | None = None) -> TokenReport:
    name, decoder, family = find_decoder_layers(model)
    n = len(decoder.layers)
    if not 1 <= cfg.layer <= n - 1:
        raise ValueError(f"layer must be in 1 … {n - 1} for this {n}-layer decoder (layers 0 … layer-1 see the whole "
                         f"prompt), got {cfg.layer}")
    check_decoder(decoder, family)
    record = PatchRecord()
    try:
        rt: FastVRuntime = install_fastv(decoder, cfg, record)
        prefix = f"{name}." if name else ""
        patched = [f"{prefix}layers.{i}" for i in range(n) if i == 0 or i >= cfg.layer]
        patched.append(f"{prefix}layers.{cfg.layer - 1}.self_attn (config: scoring attention)")
        k = cfg.layer
        if seq_len:
            kept = prompt_kept(seq_len, cfg.keep, cfg.recent)
            per_layer = [seq_len] * k + [kept] * (n - k)
            frac = (k * seq_len + (n - k) * kept) / (n * seq_len)
        else:
            per_layer, kept, frac = None, None, (k + (n - k) * cfg.keep) / n
        impl = getattr(decoder.config, "_attn_implementation", None) or "eager"
        ranking = {"last": f"layer {k - 1}'s attention ranks the prompt (last token row)",
                   "mean": f"layer {k - 1}'s attention ranks the prompt (mean received)",
                   "recent": "baseline: the latest prompt tokens are kept (a sliding window)",
                   "random": "baseline: a seeded random subset of the prompt is kept"}[cfg.score]
        notes = [f"{ranking}; "
                 f"layers {k} … {n - 1} see and cache {cfg.keep:.0%} of the prompt (the last {cfg.recent} always kept)",
                 "pruning happens at prefill only; outputs of a pruned prefill cover the kept positions only"]
        report = TokenReport(method="fastv", family=family, model=_full_name(model, name), patched=patched,
                             config=cfg.to_dict(), attention=f"transformers {impl!r}", input_tokens=seq_len,
                             tokens_per_layer=per_layer, output_tokens=kept, kv_cache_fraction=frac, notes=notes)
        attach(model, Patch("fastv", record, rt, report))
    except Exception:
        record.undo()
        raise
    return report


TOKEN_METHODS.add("tome", _apply_tome, config=ToMeConfig)
TOKEN_METHODS.add("attention", _apply_encoder_prune, config=ZeroTPruneConfig)
TOKEN_METHODS.add("mean-attention", _apply_encoder_prune, config=MeanAttentionConfig)
TOKEN_METHODS.add("cls-attention", _apply_encoder_prune, config=ClsAttentionConfig)
TOKEN_METHODS.add("random", _apply_encoder_prune, config=RandomPruneConfig)
TOKEN_METHODS.add("fastv", _apply_fastv, config=FastVConfig)


# --- the verbs ----------------------------------------------------------------------------------
def _check_seq_len(seq_len: Any) -> int | None:
    if seq_len is None:
        return None
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive whole number (the input length to plan for), got {seq_len!r}")
    return seq_len


def apply_(model: nn.Module, config: Config | dict[str, Any], seq_len: int | None = None) -> TokenReport:
    """Patch ``model`` in place with any token method's config (``{"method": "tome", "r": 8}`` or a
    config object). ``seq_len``: the input length to check and report tokens per layer for (vision
    models use their patch count). Raises before changing anything when the model, the settings or
    an existing patch do not allow it."""
    cfg = TOKEN_METHODS.parse_config(config)
    seq_len = _check_seq_len(seq_len)
    _refuse_if_patched(model)
    return TOKEN_METHODS.get(cfg.method)(model, cfg, seq_len)


def merge_(model: nn.Module, config: ToMeConfig | dict[str, Any] | None = None, *, r: int | Sequence[int] | None = None,
           prop_attn: bool | None = None, unmerge: bool | None = None, seq_len: int | None = None) -> TokenReport:
    """Token Merging (ToMe) in place: merge ``r`` tokens away in every encoder layer (or ``r[i]`` in
    layer i), keeping the class/distillation tokens and the fused attention kernel. Works on timm
    ViT/DeiT, Hugging Face ViT, DeiT, CLIP vision and BERT/RoBERTa encoders; undo with
    :func:`unpatch_`. Returns a :class:`TokenReport` (tokens per layer)."""
    fields = {k: v for k, v in {"r": list(r) if isinstance(r, (list, tuple)) else r, "prop_attn": prop_attn,
                                "unmerge": unmerge}.items() if v is not None}
    if config is None:
        cfg = ToMeConfig.parse(fields)
    else:
        cfg = TOKEN_METHODS.parse_config(config, **fields)
        if cfg.method != "tome":
            raise ConfigError(f"merge_ takes a ToMe config, got method {cfg.method!r}; use prune_ or apply_ for it")
    return apply_(model, cfg, seq_len=seq_len)


def _keep_from(keep: Any, sparsity: Any) -> Any:
    if keep is not None and sparsity is not None:
        raise ValueError("pass keep= (fraction kept) or sparsity= (fraction removed, 1 - keep), not both")
    if sparsity is None:
        return keep
    if isinstance(sparsity, (list, tuple)):
        return [1.0 - check_fraction(s, "sparsity", "[0, 1)") for s in sparsity]
    return 1.0 - check_fraction(sparsity, "sparsity", "[0, 1)")


def prune_(model: nn.Module, config: Config | dict[str, Any] | None = None, *, keep: float | Sequence[float] | None = None,
           sparsity: float | Sequence[float] | None = None, method: str | None = None, layers: Sequence[int] | None = None,
           layer: int | None = None, score: str | None = None, recent: int | None = None, iterations: int | None = None,
           tol: float | None = None, seed: int | None = None, restore: bool | None = None,
           seq_len: int | None = None) -> TokenReport:
    """Token pruning in place, ranked by attention, without training.

    Encoders (``method="attention"``, Zero-TPrune's Weighted PageRank; ``"mean-attention"``;
    ``"cls-attention"``, EViT's class-token row; ``"random"``): at each layer in ``layers`` keep the fraction ``keep`` of the unprotected tokens
    that reach it. Decoders (``method="fastv"``): after layer ``layer`` keep the fraction ``keep`` of
    the prompt tokens — and only their KV cache — for the rest of the model. ``sparsity`` may be given
    instead of ``keep`` (``keep = 1 - sparsity``). ``method`` defaults to ``"fastv"`` for decoders and
    ``"attention"`` for encoders. Undo with :func:`unpatch_`."""
    keep = _keep_from(keep, sparsity)
    if isinstance(keep, tuple):
        keep = list(keep)
    given = {"keep": keep, "layers": list(layers) if layers is not None else None, "layer": layer, "score": score,
             "recent": recent, "iterations": iterations, "tol": tol, "seed": seed, "restore": restore}
    fields = {k: v for k, v in given.items() if v is not None}
    if config is not None:
        if method is not None:
            fields["method"] = method
        cfg = TOKEN_METHODS.parse_config(config, **fields)
    else:
        if method is None:  # a decoder LM (supported or not) gets FastV, whose check names the decoders it supports
            decoder = find_decoder_layers(model, strict=False) is not None or is_generative(model)
            method = "fastv" if decoder else "attention"
        cfg = TOKEN_METHODS.parse_config({"method": method, **fields})
    if cfg.method == "tome":
        raise ConfigError("prune_ drops tokens; for ToMe merging use merge_(model, r=…)")
    return apply_(model, cfg, seq_len=seq_len)


def unpatch_(model: nn.Module) -> UnpatchReport:
    """Undo the token patch on ``model`` (or on a module inside it): every attribute the patch set
    goes back to the original object, so outputs are bit-identical to before. A ValueError when
    nothing is patched."""
    found = find_patched(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} carries no token patch (nothing to undo)")
    _, patch = found
    count = len(patch.record.changes)
    patch.record.undo()
    return UnpatchReport(patch.method, patch.report.family, patch.report.model, count)


def last_forward(model: nn.Module) -> dict[str, Any] | None:
    """What the patched model's last forward did (tokens per layer, output tokens, merges clamped for
    short inputs; for FastV the prompt and kept tokens), or None before the first forward."""
    found = find_patched(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} carries no token patch")
    last = found[1].runtime.last
    return None if last is None else dict(last)


def report_of(model: nn.Module) -> TokenReport:
    """The report of the token patch on ``model``."""
    found = find_patched(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} carries no token patch")
    return found[1].report
