"""``prunekit demo``: train a small CNN on real data, prune it several ways, print what each bought."""

from __future__ import annotations

import argparse

from .common import add_common, emit, is_quiet, say, warn

DEFAULT_TRAIN_SIZE = 20000


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("demo", help="train a small CNN, prune it with several methods, compare",
                        description=__doc__)
    p.add_argument("--data", default="auto", choices=["auto", "fashion-mnist", "digits"],
                   help="real data set (auto: Fashion-MNIST when installed, else digits)")
    p.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE, help="training examples (Fashion-MNIST)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs of the dense model")
    p.add_argument("--sparsities", type=_floats, default=(0.5, 0.9), help="comma-separated, e.g. 0.5,0.8,0.9")
    p.add_argument("--finetune-steps", type=int, default=100, help="fine-tune steps after pruning")
    p.add_argument("--seed", type=int, default=0)
    add_common(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from ..core.fraction import check_fraction

    if args.train_size < 1:
        raise ValueError(f"--train-size must be a positive integer, got {args.train_size}")
    if not args.epochs > 0:
        raise ValueError(f"--epochs must be a positive number, got {args.epochs}")
    if args.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be 0 or more, got {args.finetune_steps}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {args.seed}")
    if not args.sparsities:
        raise ValueError("--sparsities needs at least one number, e.g. 0.5,0.9")
    for s in args.sparsities:
        check_fraction(s, "--sparsities", "[0, 1)")
    if args.data == "digits" and args.train_size != DEFAULT_TRAIN_SIZE:
        raise ValueError("--train-size applies to Fashion-MNIST; scikit-learn's digits always trains on its "
                         "1,437 training examples. Drop --train-size or use --data fashion-mnist")
    if args.data == "auto" and args.train_size != DEFAULT_TRAIN_SIZE:
        from ..datasets import fashion_mnist_available

        if not fashion_mnist_available():
            warn(args, "Fashion-MNIST is not installed, so the demo uses scikit-learn's digits and --train-size "
                       "is ignored")


def run(args: argparse.Namespace) -> int:
    from ..bench.demo import DemoConfig, format_demo, run_demo

    _check_args(args)
    quiet = is_quiet(args)
    cfg = DemoConfig(data=args.data, train_size=args.train_size, epochs=args.epochs, sparsities=args.sparsities,
                     finetune_steps=args.finetune_steps, seed=args.seed, progress=not quiet)
    result = run_demo(cfg, say=lambda text: None if quiet else say(args, text))
    emit(args, result, format_demo(result))
    return 0
