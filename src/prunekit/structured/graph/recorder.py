"""Recording what a model runs: a ``__torch_function__`` mode that follows channel labels through every
torch operation of one forward pass, with the module each operation ran in.

Why a recording and not a trace. ``torch.fx.symbolic_trace`` fails on Python control flow that
depends on tensors, on Hugging Face transformers and on much of timm (measured on the model zoo:
see docs/structured.md), and the failure loses the whole model. A recording runs the real forward
on the example inputs, so whatever the model does in Python simply happens; every torch function
the forward calls (``F.conv2d``, ``F.linear``, ``F.layer_norm``, ``Tensor.view``, ``torch.roll``, …)
reaches :meth:`Recorder.__torch_function__` with its real arguments, and parameters arrive as
themselves, so each operation knows which weights it reads. The ``__torch_function__`` level was
chosen over ``TorchDispatchMode`` (aten level) because it keeps each operation's meaning: a
``F.linear``, ``F.layer_norm`` or ``F.multi_head_attention_forward`` is one call whose weights arrive
as the module's own parameters, where the aten level sees a Linear's weight through a transpose
(``aten.t`` + ``addmm``) and an attention decomposed into matmuls and views, so it would have to
re-derive which tensor is which weight. Both see about as many calls (measured on the 192 zoo models
by ``benchmarks/zoo.py --tool trace``: dispatch/function ratio median 1.0, 0.5–2.0) and cost one
forward pass on the example inputs; ``torch.fx`` traced 79/79 torchvision, 77/87 timm and 0/26
Hugging Face models of the zoo, the recordings all 192.

What a recording cannot see is where an integer came from: ``x.view(B, 768, -1)`` looks the same
whether 768 was ``x.size(1)`` or a constant. Integer module attributes equal to such a size are
updated after removal (:class:`~prunekit.structured.graph.AttrFix`), and the pruned model is run
before it is returned (``api``), which catches any size the recording could not know about.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .depgraph import AttrFix, DependencyGraph, PVal, UnsupportedOperation, Val

Info = Val | PVal | None
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def op_name(func: Callable) -> str:
    """A stable short name for a torch function or Tensor method (``__radd__`` → ``radd``)."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a Tensor property such as .T or .mT
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return name


SKIP = "skip"  # a result whose shape the check does not predict (computed from parameters, factories)


@dataclasses.dataclass
class Call:
    """One torch function call of the recorded forward: its name, module, the labels of its tensor
    inputs and, for each tensor output, its shape and what it carried."""

    name: str
    where: str
    inputs: tuple
    outputs: list
    sizes: tuple | None = None


RESHAPES = ("view", "reshape")
# Integer attributes that name the channel count a module receives (``channels``, ``in_channels``, ``in_features``)
# or makes (``out_channels``): a block that checks its input against one (diffusers' ``Downsample2D``:
# ``assert x.shape[1] == self.channels``) must see the pruned count.
CHANNEL_ATTR = re.compile(r"(^|_)(channels|features)$")


def size_args(args: tuple) -> tuple:
    """The target sizes of ``x.view(...)`` / ``x.reshape(...)`` (a tuple or varargs)."""
    out: list = []
    for a in args[1:]:
        out += list(a) if isinstance(a, (tuple, list, torch.Size)) else [a]
    return tuple(out)


def _outputs(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [r for r in result if isinstance(r, Tensor)]
    return []


class Recorder(TorchFunctionMode):
    """Follows channel labels through one forward pass of ``model`` into ``graph``."""

    def __init__(self, model: nn.Module, graph: DependencyGraph, ignored: set[int], strict: bool = False,
                 rules: Callable[..., None] | None = None) -> None:
        super().__init__()
        self.rules = rules  # the label rules (``rules.dispatch``), given by whoever records
        self.model = model
        self.g = graph
        self.ignored = ignored
        self.strict = strict
        self.params: dict[int, str] = {}
        self.owner: dict[str, tuple[str, nn.Module, str]] = {}
        self.module_names: dict[int, str] = {}
        self.vals: dict[int, tuple[Tensor, Info]] = {}
        self.stack: list[str] = []
        self.opaque = 0
        self.out_slots: dict[tuple[str, int], np.ndarray] = {}
        self.log: list[Call] = []
        self.derived: set[int] = set()
        self._keep: list[Tensor] = []
        self._outputs_seen: set[str] = set()
        self._index(model)

    # --- parameters and modules -------------------------------------------------------------
    def _index(self, model: nn.Module) -> None:
        for mname, mod in model.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(mod), mname)
            tensors = list(mod._parameters.items()) + list(mod._buffers.items())
            for attr, t in tensors:
                if t is None:
                    continue
                full = f"{mname}.{attr}" if mname else attr
                canonical = self.params.setdefault(id(t), full)
                self.owner.setdefault(canonical, (mname, mod, attr))
                self.g.refs.setdefault(canonical, [])
                if (mname, attr) not in self.g.refs[canonical]:
                    self.g.refs[canonical].append((mname, attr))

    def module_of(self, tensor_name: str) -> tuple[str, nn.Module, str]:
        return self.owner[tensor_name]

    @property
    def where(self) -> str:
        return self.stack[-1] if self.stack and self.stack[-1] else "(top-level forward)"

    def top_module(self) -> nn.Module | None:
        if not self.stack:
            return None
        return self.model.get_submodule(self.stack[-1]) if self.stack[-1] else self.model

    # --- labels of tensors --------------------------------------------------------------------
    def info(self, t: Any) -> Info:
        if not isinstance(t, Tensor):
            return None
        hit = self.vals.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        name = self.params.get(id(t))
        if name is not None:
            return PVal(((name, tuple(range(t.dim()))),))
        return None

    def set(self, t: Any, info: Info) -> None:
        if not isinstance(t, Tensor):
            return
        if info is None:
            self.vals.pop(id(t), None)
        else:
            self.vals[id(t)] = (t, info)

    def set_all(self, result: Any, infos: Any) -> None:
        if isinstance(result, Tensor):
            self.set(result, infos if not isinstance(infos, list) else (infos[0] if infos else None))
        elif isinstance(result, (tuple, list)):
            seq = infos if isinstance(infos, list) else [infos] * len(result)
            for r, i in zip(result, seq):
                self.set_all(r, i)

    def producer(self, key: tuple[str, int], n: int, pinned: str | None = None) -> np.ndarray:
        """The slots of output positions of tensor dimension ``key`` (the same slots on every call)."""
        if key not in self.out_slots:
            self.out_slots[key] = self.g.new_slots(n, pinned)
            self.g.produced[key] = self.out_slots[key]
        return self.out_slots[key]

    def pin(self, info: Any, reason: str) -> None:
        if isinstance(info, Val):
            self.g.pin(info.labels, reason)
        elif isinstance(info, (list, tuple)):
            for i in info:
                self.pin(i, reason)

    def unknown(self, name: str, tracked: list[Val]) -> None:
        where = self.where
        if self.strict:
            raise UnsupportedOperation(
                f"cannot follow channels through the operation {name!r} in module {where!r}. Pass that module in "
                f"ignore=[...] (its channels are then kept whole), or call without strict=True to have them pinned.")
        self.g.unknown_ops[f"{name} in {where}"] = self.g.unknown_ops.get(f"{name} in {where}", 0) + 1
        for v in tracked:
            self.g.pin(v.labels, f"unknown operation {name!r} in {where!r} (ignore=[that module] keeps it whole)")

    # --- the mode ------------------------------------------------------------------------------
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = op_name(func)
        outs = _outputs(result)
        if self.opaque:
            self.log.append(Call(name, self.where, (), [(tuple(o.shape), SKIP) for o in outs]))
            return result
        self.g.ops += 1
        ins = tuple(self.info(t) for t in _tensors((args, kwargs), depth=4))
        try:
            self.rules(self, func, name, args, kwargs, result)
        except UnsupportedOperation:
            raise
        except Exception as exc:  # a rule that does not fit this call: keep its channels whole, go on
            if self.strict:
                raise UnsupportedOperation(f"cannot follow {name!r} in module {self.where!r}: {exc}") from exc
            key = f"{name} in {self.where} (its rule failed: {type(exc).__name__})"
            self.g.unknown_ops[key] = self.g.unknown_ops.get(key, 0) + 1  # reported and warned, never silent
            self.pin(list(ins), f"{name} in {self.where!r} could not be followed ({type(exc).__name__})")
            self.set_all(result, None)
        specs = [(tuple(o.shape), self.spec_of(o)) for o in outs]
        self.log.append(Call(name, self.where, ins, specs, size_args(args) if name in RESHAPES else None))
        return result

    def spec_of(self, t: Tensor) -> Any:
        """What the pruned model's version of ``t`` must look like (see :mod:`.check`)."""
        hit = self.vals.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        if id(t) in self.params:
            return self.info(t)
        return SKIP if id(t) in self.derived else None

    # --- module context ------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with torch._C.DisableTorchFunction():  # the hook's own tensor calls are not the model's
            self._enter(module, args, kwargs)

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.module_names.get(id(module), "?")
        self.stack.append(name)
        if not self.opaque and name not in self.g.module_inputs:
            self.g.module_inputs[name] = [i for i in (self.info(t) for t in _tensors((args, kwargs), depth=3))
                                          if isinstance(i, Val) and i.flat]
            self._channel_attrs(module, name, self.g.module_inputs[name], outgoing=False)
        if id(module) in self.ignored and not isinstance(module, CONVS + (nn.Linear,)):
            if not self.opaque:
                for t in _tensors((args, kwargs)):
                    self.pin(self.info(t), f"inside ignore=[{name}]")
            self.opaque += 1

    def _channel_attrs(self, module: nn.Module, name: str, vals: list, outgoing: bool) -> None:
        """Record :class:`AttrFix` es for the module's channel-count attributes equal to the width of its first
        tracked input (``channels``, ``in_channels``) or output (``out_channels``). torch.nn's own layers are
        left to removal, which sizes them from their weights."""
        if not vals or type(module).__module__.startswith("torch.nn"):
            return
        v = vals[0]
        width = len(v.labels)
        for k, val in vars(module).items():
            if (type(val) is int and val == width and width > 1 and not k.startswith("_")
                    and CHANNEL_ATTR.search(k) and k.startswith("out") == outgoing):
                self.g.attr_fixes.append(AttrFix(name, k, v.labels.copy()))

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        name = self.stack[-1] if self.stack else None
        if name is not None and not self.opaque and name not in self._outputs_seen:
            self._outputs_seen.add(name)
            with torch._C.DisableTorchFunction():
                outs = [i for i in (self.info(t) for t in _tensors(output, depth=2)) if isinstance(i, Val) and i.flat]
            self._channel_attrs(module, name, outs, outgoing=True)
        if self.stack:
            self.stack.pop()
        if id(module) in self.ignored and not isinstance(module, CONVS + (nn.Linear,)):
            self.opaque -= 1


def _tensors(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Tensor]:
    """Every tensor inside nested tuples, lists, dicts, dataclasses and plain objects (caches)."""
    seen = set() if seen is None else seen
    if depth > 6 or id(obj) in seen:
        return
    if isinstance(obj, Tensor):
        yield obj
        return
    if isinstance(obj, (str, bytes, int, float, bool, type(None), nn.Module)):
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        items: Iterable = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        items = obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = (getattr(obj, f.name, None) for f in dataclasses.fields(obj))
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("transformers", "timm", "torchvision"):
        items = vars(obj).values()
    else:
        return
    for x in items:
        yield from _tensors(x, depth + 1, seen)


def pointwise_tag(name: str) -> bool:
    """Whether aten's operator of this name is tagged pointwise (elementwise with broadcasting)."""
    return _POINTWISE.setdefault(name, _lookup_pointwise(name))


_POINTWISE: dict[str, bool] = {}


def _lookup_pointwise(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    try:
        for ov in packet.overloads():
            if torch.Tag.pointwise in getattr(packet, ov).tags:
                return True
    except Exception:  # pragma: no cover - exotic packets
        return False
    return False
