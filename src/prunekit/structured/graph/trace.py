"""Building a model's :class:`DependencyGraph` on example inputs, and the torch.fx trace (kept for
``fold_bn_`` and as the ``engine="fx"`` alternative).

``engine="record"`` (the default) runs the model's own forward under the recorder
(:mod:`prunekit.structured.graph.recorder`), so Python control flow, Hugging Face models and code that fx
or ``torch.compile`` cannot trace are handled. ``engine="fx"`` first traces the model with
``torch.fx.symbolic_trace`` and records the traced graph instead: the same rules, but a model fx
cannot trace is refused. On the zoo benchmark (docs/zoo.md) fx traces fewer models and gives the
same graph wherever it does trace, so it stays an option for comparison only.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import fx, nn

from ...infra.calling import call_model
from .depgraph import DependencyGraph, UnsupportedOperation, Val
from . import rules
from .recorder import CONVS, Recorder, _tensors

ENGINES = ("record", "fx")


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: Iterable[nn.Module] = (), concrete_args: dict[str, Any] | None = None
          ) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; modules in ``leaves`` are kept whole; ``concrete_args`` fixes
    arguments (e.g. keyword arguments left at their defaults). A clear error if fx cannot trace."""
    tracer = _Tracer({id(m) for m in leaves})
    try:
        graph = tracer.trace(model, concrete_args=concrete_args or None)
    except Exception as exc:  # fx raises many kinds: control flow on tensors, unsupported Python
        raise UnsupportedOperation(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. Use engine='record' "
            "(the default), which runs the model instead of tracing it."
        ) from exc
    return fx.GraphModule(tracer.root, graph)


@contextlib.contextmanager
def recording_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients and (for Hugging Face models) no KV cache while the graph is recorded."""
    was_training = model.training
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    model.eval()
    if cache:
        config.use_cache = False
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        if cache:
            config.use_cache = cache


def resolve_ignore(model: nn.Module, ignore: Iterable[nn.Module | str]) -> list[nn.Module]:
    """Modules from ``ignore`` (modules of ``model`` or their qualified names)."""
    out = []
    for m in ignore:
        if isinstance(m, str):
            try:
                m = model.get_submodule(m)
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(f"ignore names {m!r}, which is not a module of {type(model).__name__} "
                                 f"(some of its modules: {', '.join(names[:8])}…)") from None
        elif not isinstance(m, nn.Module):
            raise TypeError(f"ignore= takes modules or module names, got {type(m).__name__}")
        out.append(m)
    return out


def build_graph(model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module | str] = (),
                strict: bool = False, engine: str = "record") -> DependencyGraph:
    """Run ``model`` once on ``example_inputs`` (a tensor, tuple or dict) and build its dependency graph.

    Modules in ``ignore`` keep their output channels (a Conv/Linear still loses the input channels its
    producer loses); any other ignored module is opaque: its channels are kept whole. ``strict=True``
    makes an operation the graph does not know an error instead of a pin."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    ignore = resolve_ignore(model, ignore)
    ignored = {id(m) for m in ignore}
    if isinstance(example_inputs, Mapping):
        params = inspect.signature(model.forward).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = set(example_inputs) - set(params)
        if unknown and not takes_kwargs:
            raise ValueError(f"example_inputs has keys {sorted(unknown)} that {type(model).__name__}.forward() "
                             f"does not take (it takes {', '.join(params)})")
    graph = DependencyGraph()
    with recording_mode(model):
        if engine == "fx":
            gm = _fx_module(model, example_inputs, ignore)
            record(model, lambda: _call_fx(gm, example_inputs), graph, ignored, strict)
        else:
            record(model, lambda: call_model(model, example_inputs), graph, ignored, strict)
    return graph


def _fx_module(model: nn.Module, example_inputs: Any, ignore: list[nn.Module]) -> fx.GraphModule:
    params = inspect.signature(model.forward).parameters
    if isinstance(example_inputs, Mapping):
        given = set(example_inputs)
    else:
        n = len(example_inputs) if isinstance(example_inputs, (tuple, list)) else 1
        given = set(list(params)[:n])
    concrete = {k: p.default for k, p in params.items() if k not in given
                and p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    return trace(model, [m for m in ignore if not isinstance(m, CONVS + (nn.Linear,))], concrete)


def _call_fx(gm: fx.GraphModule, example_inputs: Any) -> Any:
    placeholders = [p.target for p in gm.graph.nodes if p.op == "placeholder"]
    if isinstance(example_inputs, Mapping):
        return gm(*[example_inputs.get(p) for p in placeholders])
    return call_model(gm, example_inputs)


def record(model: nn.Module, call: Callable[[], Any], graph: DependencyGraph, ignored: set[int],
           strict: bool = False) -> Any:
    """Run ``call()`` (one forward of ``model``) under the recorder; pin whatever reaches the output."""
    rec = Recorder(model, graph, ignored, strict, rules.dispatch)
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True, always_call=True))
    try:
        with rec:
            out = call()
        graph.output_shapes = [tuple(t.shape) for t in _tensors(out)]
        for t in _tensors(out):
            info = rec.info(t)
            if isinstance(info, Val):
                graph.pin(info.labels, "model output")
    finally:
        for h in handles:
            h.remove()
        rec.vals.clear()
        rec._keep.clear()
        graph.log = rec.log
    return out
