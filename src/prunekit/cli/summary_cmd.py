"""``prunekit summary``: per-layer parameters, non-zeros, sparsity and MACs of a model."""

from __future__ import annotations

import argparse

import torch

from .common import add_common, emit


def add_parser(subs: argparse._SubParsersAction) -> None:
    from ..models.registry import REFERENCE_MODELS

    p = subs.add_parser("summary", help="per-layer parameters, non-zeros, sparsity, MACs and size",
                        description=__doc__)
    p.add_argument("--model", required=True,
                   help=f"a reference network ({', '.join(sorted(REFERENCE_MODELS))})")
    p.add_argument("--weights", help="weights to load: a file written by prunekit.save_sparse or torch.save(state_dict)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input used to count MACs")
    p.add_argument("--latency", default="", metavar="B1,B2",
                   help="also time a forward pass at these batch sizes, e.g. 1,256")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.mask import load_state_dict_
    from ..core.sparse_io import load_sparse
    from ..core.stats import summary
    from ..models.registry import reference_model

    ref = reference_model(args.model)
    model = ref.build()
    if args.weights:
        if args.weights.endswith(".safetensors"):
            state = load_sparse(args.weights)
        else:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
        load_state_dict_(model, state)
    try:
        batches = tuple(int(b) for b in args.latency.split(",") if b)
    except ValueError:
        raise ValueError(f"--latency takes comma-separated batch sizes such as 1,256, got {args.latency!r}") from None
    s = summary(model, example_inputs=torch.zeros(args.batch, *ref.input_shape), latency_batches=batches)
    emit(args, s.to_dict(), str(s))
    return 0
