"""``prunekit summary``: per-layer parameters, non-zeros, sparsity and MACs of a model."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def _read_weights(path: str) -> dict:
    """A state dict from a save_sparse file or a torch.save(state_dict) file, with clear errors."""
    import pickle

    from ..core.sparse_io import load_sparse

    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    if path.endswith(".safetensors"):
        return load_sparse(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"--weights {path} holds pickled Python objects besides tensors, which prunekit does not "
                         "unpickle (that could run code from the file); save a state_dict of tensors, or use "
                         "prunekit.save_sparse") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"--weights {path} is not a readable torch file (truncated or corrupt?): "
                         f"{' '.join(str(exc).split())[:200]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def run(args: argparse.Namespace) -> int:
    from ..core.mask import load_state_dict_
    from ..metrics.summary import summary
    from ..models.registry import reference_model

    if args.batch < 1:
        raise ValueError(f"--batch must be a positive integer (the example input's batch size), got {args.batch}")
    try:
        batches = tuple(int(b) for b in args.latency.split(",") if b)
    except ValueError:
        raise ValueError(f"--latency takes comma-separated batch sizes such as 1,256, got {args.latency!r}") from None
    if any(b < 1 for b in batches):
        raise ValueError(f"--latency batch sizes must be positive integers, got {args.latency!r}")
    ref = reference_model(args.model)
    model = ref.build()
    if args.weights:
        load_state_dict_(model, _read_weights(args.weights))
    s = summary(model, example_inputs=torch.zeros(args.batch, *ref.input_shape), latency_batches=batches)
    emit(args, s.to_dict(), str(s))
    return 0
