"""Contractions: Linear, matmul / bmm / addmm / baddbmm, einsum, scaled-dot-product attention and
``nn.MultiheadAttention``.

All are one rule written in einsum letters. Each operand's dimensions get letters; a letter summed
over unites the channels of the two operands that carry it (a query's and a key's head dims, an
activation's channels and a weight's input columns); a parameter's letter that reaches the output
produces new channels (a weight's output rows: fresh slots, as a Linear does); an activation's
channels on a letter that reaches the output are carried (attention values through ``attn @ v``,
the channels of a token-mixing MLP). Grouped-query attention repeats the key/value heads' labels.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor, nn

from ..depgraph import PCat, PVal, Val
from .elementwise import param_members, tensor_member
from ..recorder import Recorder

Operand = tuple[str, Sequence[int], Any]  # letters, shape, info


def weight_info(rec: Recorder, t: Tensor | None) -> PVal | None:
    """The parameter behind a weight argument: itself, or — when the module computes its weight from its
    own ``weight`` parameter (weight standardization) — that parameter."""
    if t is None:
        return None
    info = rec.info(t)
    if isinstance(info, PVal):
        return info
    if isinstance(info, Val):
        return None
    mod = rec.top_module()
    w = getattr(mod, "weight", None) if mod is not None else None
    if isinstance(w, nn.Parameter) and w.shape == t.shape and id(w) in rec.params:
        return PVal(((rec.params[id(w)], tuple(range(w.dim()))),))
    return None


def _repeat_to(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``labels`` repeated along axes where ``shape`` is a multiple (grouped-query heads), else None."""
    if labels.shape == shape:
        return labels
    if len(labels.shape) != len(shape) or any(s % n for s, n in zip(shape, labels.shape)):
        return None
    for a, (s, n) in enumerate(zip(shape, labels.shape)):
        if s != n:
            labels = np.repeat(labels, s // n, axis=a)
    return labels


def contract(rec: Recorder, name: str, operands: list[Operand], out_letters: str, weight: int | None = -1) -> Val | None:
    """Labels of an einsum-like contraction's output (and the members / unions / pins it implies).

    Only operand ``weight`` may produce new channels (a Linear's weight); ``-1``: the one parameter
    operand, when another operand is an activation; ``None``: none."""
    if weight == -1:
        pv = [i for i, (_, _, info) in enumerate(operands) if isinstance(info, PVal)]
        has_val = any(isinstance(info, Val) for _, _, info in operands)
        weight = pv[0] if len(pv) == 1 and has_val else None
    sizes: dict[str, int] = {}
    for ls, shape, _ in operands:
        for letter, s in zip(ls, shape):
            sizes[letter] = max(sizes.get(letter, 1), s)
    block: list | None = None  # [letters, labels, free letter]
    where = rec.where
    for ls, shape, info in operands:
        if not isinstance(info, Val):
            continue
        vl = tuple(ls[d] for d in info.dims)
        fl = vl[info.free]
        if block is None:
            block = [vl, info.labels, fl]
            continue
        if set(vl) == set(block[0]) and fl == block[2]:
            lab = np.transpose(info.labels, [vl.index(x) for x in block[0]])
            big = tuple(max(a, b) for a, b in zip(lab.shape, block[1].shape))
            a, b = _repeat_to(lab, big), _repeat_to(block[1], big)
            if a is not None and b is not None:
                rec.g.union(b, a)
                continue
        if fl in block[0] and fl != block[2]:  # its channels run along a fixed axis of the block (heads): keep
            rec.g.pin(info.labels, f"{name} in {where!r} mixes heads the graph keeps whole")  # the block, pin these
            continue
        if block[2] in vl and block[2] != fl:
            rec.g.pin(block[1], f"{name} in {where!r} mixes heads the graph keeps whole")
            block = [vl, info.labels, fl]
            continue
        rec.g.pin(block[1], f"{name} in {where!r} meets channels along different dimensions")
        rec.g.pin(info.labels, f"{name} in {where!r} meets channels along different dimensions")
        for _, _, i in operands:
            rec.pin(i, f"{name} in {where!r}")
        return None
    producers: dict[str, list[tuple[str, int]]] = {}
    for oi, (ls, shape, info) in enumerate(operands):
        if isinstance(info, PVal):
            for pname, dmap in info.sources:
                for d, letter in enumerate(ls):
                    if shape[d] <= 1:
                        continue
                    pd = dmap[d] if d < len(dmap) else None
                    if block is not None and letter in block[0]:
                        if len(block[0]) == 1 and pd is not None:
                            tensor_member(rec, pname, pd, block[1], "in")
                        else:
                            rec.g.pin(block[1], f"{pname} meets split channels in {where!r}")
                    elif letter in out_letters and pd is not None and oi == weight:
                        producers.setdefault(letter, []).append((pname, pd))
        elif info is None and block is not None and block[2] in ls and shape[ls.index(block[2])] > 1:
            rec.g.pin(block[1], f"{name} in {where!r} contracts the channels with a tensor the graph cannot cut")
    out: Val | None = None
    if block is not None:
        vl, labels, fl = block
        if all(x in out_letters for x in vl):
            target = tuple(sizes[x] for x in vl)
            labels = _repeat_to(labels, target) if labels.shape != target else labels
            if labels is None:
                rec.g.pin(block[1], f"{name} in {where!r}")
            else:
                out = Val(labels, tuple(out_letters.index(x) for x in vl), vl.index(fl))
        elif fl in out_letters:
            rec.g.pin(labels, f"{name} in {where!r} sums over heads / groups of the channels")
    for letter, srcs in producers.items():
        pname, pd = srcs[0]
        mod = rec.module_of(pname)[1]
        if out is not None or len(producers) > 1:
            rec.producer((pname, pd), sizes[letter], f"{name} in {where!r} produces channels along two dimensions")
            continue
        why = f"ignore=[{rec.module_of(pname)[0]}]" if id(mod) in rec.ignored else None
        slots = rec.producer((pname, pd), sizes[letter], why)
        for p, d in srcs:
            tensor_member(rec, p, d, slots, "out")
        out = Val(slots, (out_letters.index(letter),), 0)
    return out


def add_bias(rec: Recorder, out: Val | None, bias: Tensor | None, result: Tensor) -> None:
    """A bias added to a contraction's output: a member along the output channels, or a pin."""
    if bias is None or out is None:
        return
    info = rec.info(bias)
    if isinstance(info, PCat) and out.flat and bias.dim() == 1 and info.dim == 0:
        for start, stop, part in info.parts:  # a bias concatenated from pieces: each piece cut with its channels
            for pname, dmap in part.sources:
                if dmap[:1] == (0,):
                    tensor_member(rec, pname, 0, out.labels[start:stop], "out")
        return
    shift = result.dim() - bias.dim()
    for d in out.dims:
        bd = d - shift
        if bd < 0 or bias.shape[bd] == 1:
            continue
        if isinstance(info, PVal) and out.flat:
            param_members(rec, info, bd, out.labels, "out", "is added after a reshape")
        elif isinstance(info, Val):
            rec.g.union(out.labels, info.labels) if info.labels.shape == out.labels.shape else \
                rec.g.pin(out.labels, "bias")
        else:
            rec.g.pin(out.labels, f"a bias the graph cannot cut in {rec.where!r}")


def _batch(n: int) -> str:
    return "abcdefghij"[:n]


def matmul_letters(na: int, nb: int) -> tuple[str, str, str]:
    if na == 1 and nb == 1:
        return "K", "K", ""
    if na == 1:
        bt = _batch(nb - 2)
        return "K", bt + "KN", bt + "N"
    if nb == 1:
        bt = _batch(na - 2)
        return bt + "MK", "K", bt + "M"
    n = max(na, nb) - 2
    bt = _batch(n)
    return bt[n - (na - 2):] + "MK", bt[n - (nb - 2):] + "KN", bt + "MN"


def linear(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x = args[0] if args else kwargs["input"]
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    bt = _batch(x.dim() - 1)
    wi = weight_info(rec, w)
    out = contract(rec, "linear", [(bt + "K", x.shape, rec.info(x)), ("NK", w.shape, wi if wi else rec.info(w))],
                   bt + "N", weight=1)
    add_bias(rec, out, b, result)
    rec.set(result, out)


def matmul(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    a, b = (args[1], args[0]) if name == "rmatmul" else (args[0], args[1] if len(args) > 1 else kwargs["other"])
    if name == "mv":
        la, lb, lo = "MK", "K", "M"
    else:
        la, lb, lo = matmul_letters(a.dim(), b.dim())
    rec.set(result, contract(rec, name, [(la, a.shape, rec.info(a)), (lb, b.shape, rec.info(b))], lo))


def addmm(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    c, a, b = args[0], args[1], args[2]
    la, lb, lo = ("aMK", "aKN", "aMN") if name in ("baddbmm", "baddbmm_") else ("MK", "KN", "MN")
    out = contract(rec, name, [(la, a.shape, rec.info(a)), (lb, b.shape, rec.info(b))], lo)
    add_bias(rec, out, c, result)
    ci = rec.info(c)
    if isinstance(ci, Val) and out is None:
        rec.pin(ci, f"{name} in {rec.where!r}")
    rec.set(result, out if out is not None else (ci if isinstance(ci, Val) and c.shape == result.shape else None))


def grouped_mm(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """``torch._grouped_mm(x (S, K), w (E, K, N), offs)``: each token's expert weight; channels as in
    ``x @ w[e]`` (the experts' shared input / output widths)."""
    x, w = args[0], args[1] if len(args) > 1 else kwargs.get("mat2", kwargs.get("weight"))
    if x.dim() != 2 or w.dim() != 3:
        rec.pin([rec.info(x), rec.info(w)], f"{name} in {rec.where!r}")
        rec.set(result, None)
        return
    out = contract(rec, name, [("sK", x.shape, rec.info(x)), ("eKN", w.shape, rec.info(w))], "sN", weight=1)
    rec.set(result, out)
    step = max(1, 16 // x.element_size())  # the kernel needs rows aligned to 16 bytes
    for v in (rec.info(x), out):
        if isinstance(v, Val):
            for s in v.labels.ravel().tolist():
                rec.g.multiple_of[s] = step


def einsum(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    eq = args[0]
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if not isinstance(eq, str):
        rec.pin([rec.info(t) for t in ops if isinstance(t, Tensor)], "einsum in sublist form")
        rec.set(result, None)
        return
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    ins = lhs.split(",")
    spare = iter("ABCDEFGHIJLOPQRSTUVWXYZ")
    ell = ""
    fixed = []
    for spec, t in zip(ins, ops):
        if "..." in spec:
            n = t.dim() - (len(spec) - 3)
            if len(ell) < n:
                ell = "".join(next(spare) for _ in range(n - len(ell))) + ell
            spec = spec.replace("...", ell[len(ell) - n:] if n else "")
        fixed.append(spec)
    if "->" in eq:
        out = rhs.replace("...", ell)
    else:
        counts = {c: "".join(fixed).count(c) for c in "".join(fixed)}
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    if any(re.search(r"(.).*\1", s) for s in fixed):  # a repeated letter in one operand (a diagonal)
        rec.pin([rec.info(t) for t in ops], "einsum with a diagonal")
        rec.set(result, None)
        return
    rec.set(result, contract(rec, "einsum", [(s, t.shape, rec.info(t)) for s, t in zip(fixed, ops)], out))


def sdpa(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """``F.scaled_dot_product_attention``: queries and keys are united along their head dims; the
    output carries the values' labels (key/value heads repeated under grouped-query attention)."""
    q, k, v = (args + (None, None, None))[:3]
    q = q if q is not None else kwargs["query"]
    k = k if k is not None else kwargs["key"]
    v = v if v is not None else kwargs["value"]
    bt = _batch(q.dim() - 2)
    qi, ki, vi = rec.info(q), rec.info(k), rec.info(v)
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if isinstance(rec.info(mask), Val):
        rec.pin(rec.info(mask), "attention mask")
    kshape = tuple(k.shape)
    if q.dim() >= 3 and k.shape[-3] != q.shape[-3] and isinstance(ki, Val):
        ki, kshape = _expand_heads(ki, k, q.shape[-3])
    contract(rec, "attention", [(bt + "LE", q.shape, qi), (bt + "SE", kshape, ki)], bt + "LS")
    scores = tuple(q.shape[:-1]) + (k.shape[-2],)
    vshape = tuple(v.shape)
    if q.dim() >= 3 and v.shape[-3] != q.shape[-3] and isinstance(vi, Val):
        vi, vshape = _expand_heads(vi, v, q.shape[-3])
    rec.set(result, contract(rec, "attention", [(bt + "LS", scores, None), (bt + "SF", vshape, vi)], bt + "LF"))


def _expand_heads(v: Val, t: Tensor, heads: int) -> tuple[Val, tuple[int, ...]]:
    hd = t.dim() - 3
    shape = list(t.shape)
    shape[hd] = heads
    if hd in v.dims:
        a = v.dims.index(hd)
        v = Val(np.repeat(v.labels, heads // t.shape[hd], axis=a), v.dims, v.free)
    return v, tuple(shape)


def mha(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """``nn.MultiheadAttention``: its embedding width is both the residual width and the width of q, k and
    v, so the input channels, the in/out projections' rows and columns go together — the same positions
    in every head, so ``head_dim = embed_dim / num_heads`` stays whole."""
    native = name == "_native_multi_head_attention"
    names = (["query", "key", "value", "embed_dim", "num_heads", "in_proj_weight", "in_proj_bias", "out_proj_weight",
              "out_proj_bias"] if native else
             ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
              "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias"])
    a = dict(zip(names, args))
    a.update(kwargs)
    q, k, v, heads = a["query"], a["key"], a["value"], a["num_heads"]
    infos = [rec.info(t) for t in (q, k, v)]
    e = q.shape[-1]
    ok = all(isinstance(i, Val) and i.flat and i.dim == t.dim() - 1 for i, t in zip(infos, (q, k, v)))
    separate = a.get("use_separate_proj_weight", False)
    if not ok or separate or e % heads or infos[1].labels.shape != infos[0].labels.shape:
        rec.pin(infos, f"nn.MultiheadAttention in {rec.where!r} (cross-attention with other widths is kept whole)")
        rec.set_all(result, None)
        return
    labels = infos[0].labels
    for i in infos[1:]:
        rec.g.union(labels, i.labels)
    rec.g.unite_along(labels.reshape(heads, e // heads), 1)
    params = {n: rec.info(a.get(n)) for n in ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
                                               "bias_k", "bias_v")}
    if not isinstance(params["in_proj_weight"], PVal) or not isinstance(params["out_proj_weight"], PVal):
        rec.g.pin(labels, f"nn.MultiheadAttention in {rec.where!r} with computed weights")
        rec.set_all(result, None)
        return
    three = np.concatenate([labels, labels, labels])
    for n, dims in (("in_proj_weight", {0: three, 1: labels}), ("in_proj_bias", {0: three}),
                    ("out_proj_weight", {0: labels, 1: labels}), ("out_proj_bias", {0: labels}),
                    ("bias_k", {2: labels}), ("bias_v", {2: labels})):
        info = params[n]
        if isinstance(info, PVal):
            pname = info.sources[0][0]
            for d, lab in dims.items():
                tensor_member(rec, pname, d, lab, "in" if d == 1 else "out")
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    rec.set_all(result, [Val(labels, (outs[0].dim() - 1,), 0)] + [None] * (len(outs) - 1)
                if isinstance(result, (tuple, list)) else Val(labels, (result.dim() - 1,), 0))


HANDLERS: dict[str, Callable] = {
    "linear": linear, "matmul": matmul, "rmatmul": matmul, "mm": matmul, "bmm": matmul, "mv": matmul,
    "addmm": addmm, "baddbmm": addmm, "addmm_": addmm, "baddbmm_": addmm, "einsum": einsum,
    "scaled_dot_product_attention": sdpa, "_grouped_mm": grouped_mm, "grouped_mm": grouped_mm, "multi_head_attention_forward": mha, "_native_multi_head_attention": mha,
}
