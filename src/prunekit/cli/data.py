"""``prunekit data``: score a data set's examples, select what to keep, compare strategies; at web
scale, embed Parquet shards and prune them with SemDeDup or DBP, on one process or Ray.

    prunekit data score   --data fashion-mnist --limit 20000 --method el2n --out scores.npy
    prunekit data select  --scores scores.npy --keep 0.1 --strategy ccs --out keep.parquet
    prunekit data bench   --data digits --fractions 0.5 0.1
    prunekit data embed   --texts shards/*.parquet --column text --out emb/
    prunekit data dedup   --emb emb/ --clusters 1000 --eps 0.05 --out keep-dedup.parquet
    prunekit data density --emb emb/ --clusters 1000 --keep 0.3 --out keep-dbp.parquet
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from .common import add_common, emit, say


def _int_at_least(low: int, words: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (``words`` says so in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value

BUILTIN = ("digits", "fashion-mnist")


def _dataset(name: str, limit: int | None, split: str = "train") -> Any:
    from ..datasets import load_digits, load_fashion_mnist

    if name == "digits":
        data = load_digits(split)
        if limit is not None:
            from torch.utils.data import TensorDataset

            data = TensorDataset(*(t[:limit] for t in data.tensors))
        return data
    if name == "fashion-mnist":
        return load_fashion_mnist(split, limit=limit)
    raise ValueError(f"unknown data set {name!r}; use one of {', '.join(BUILTIN)}, or a .npy/.parquet file")


def _model_fn(args: argparse.Namespace) -> Callable[[], Any]:
    from ..models import MLP, SmallCNN

    kind = args.model or ("mlp" if args.data == "digits" else "smallcnn")
    if kind == "mlp":
        return lambda: MLP()
    widths = tuple(args.widths)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"--widths needs three positive integers, got {args.widths}")
    return lambda: SmallCNN(widths=widths)


def _check_out(path: str, overwrite: bool = False, flag: str = "--out") -> None:
    """Fail before any work when the output cannot (or may not) be written."""
    from ..data.io import check_output_file

    check_output_file(path, overwrite, flag)


def _check_paths(args: argparse.Namespace, outputs: tuple[str, ...], inputs: tuple[str, ...]) -> None:
    """Fail before any work when two of the outputs share a path or an output would replace an input
    (``outputs``/``inputs`` name the options, e.g. ``"out"``, ``"pairs_out"``)."""
    from ..infra.atomic import check_distinct

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    check_distinct({flag(o): getattr(args, o, None) for o in outputs},
                   {flag(i): v for i in inputs if (v := getattr(args, i, None)) not in BUILTIN})


def _score_input(args: argparse.Namespace) -> Any:
    """The data to score: a built-in set, an (N, d) .npy of embeddings, or a .parquet text column."""
    from ..data import load_array

    if args.data in BUILTIN:
        return _dataset(args.data, args.limit)
    if args.data.endswith(".parquet") and args.text_column:
        texts = load_array(args.data, args.text_column)
        return [str(t) for t in texts[: args.limit]]
    arr = load_array(args.data)
    if arr.ndim != 2:
        raise ValueError(f"--data {args.data}: expected an (N, d) array of embeddings, got shape {arr.shape}")
    return arr[: args.limit]


def _run_score(args: argparse.Namespace) -> int:
    from ..data import concept_clusters, embeddings_of, feature_extractor, save_array, score
    from ..data.scores import TRAINED

    _check_paths(args, ("out", "clusters_out"), ("data",))
    _check_out(args.out, args.overwrite)
    if args.clusters_out:
        _check_out(args.clusters_out, args.overwrite, "--clusters-out")
        if args.method != "density":
            raise ValueError("--clusters-out only goes with --method density")
    data = _score_input(args)
    progress = not (args.quiet or args.json)
    say(args, f"scoring {len(data)} examples with {args.method}")
    clusters = None
    if args.method in TRAINED:
        if args.data not in BUILTIN:
            raise ValueError(f"--method {args.method} trains proxy models and needs labelled data: --data {' or '.join(BUILTIN)}")
        scores = score(data, args.method, model_fn=_model_fn(args), epochs=args.epochs, n_models=args.n_models,
                       seed=args.seed, progress=progress)
    else:
        embed_fn = None
        if args.data in BUILTIN:  # embed with a proxy trained briefly on the data
            import torch

            from ..train import fit

            torch.manual_seed(args.seed)
            proxy = _model_fn(args)()
            fit(proxy, data, epochs=max(args.epochs, 0.1), seed=args.seed, progress=progress)
            embed_fn = feature_extractor(proxy)
        x = embeddings_of(data, embed_fn, progress=progress)
        if args.method == "density":
            clusters = concept_clusters(x, n_clusters=args.n_clusters, seed=args.seed)
            scores = clusters.per_example()
        else:
            scores = score(x, "prototypes", n_clusters=args.n_clusters, seed=args.seed)
    save_array(args.out, scores, column="score")
    if clusters is not None and args.clusters_out:
        save_array(args.clusters_out, clusters.labels, column="cluster")
    emit(args, {"method": args.method, "n": len(scores), "out": args.out, "mean": float(scores.mean()),
                "min": float(scores.min()), "max": float(scores.max())},
         f"wrote {len(scores)} {args.method} scores to {args.out} (mean {scores.mean():.4g}, "
         f"range {scores.min():.4g}..{scores.max():.4g})")
    return 0


def _run_select(args: argparse.Namespace) -> int:
    from ..data import load_array, save_array, select

    _check_paths(args, ("out",), ("scores", "labels"))
    _check_out(args.out, args.overwrite)
    scores = load_array(args.scores, args.column)
    labels = None
    if args.labels:
        labels = load_array(args.labels)
    elif args.data:
        labels = _dataset(args.data, args.limit).tensors[1].numpy()
    options = {k: getattr(args, k) for k in ("beta", "bins", "temperature", "min_keep") if getattr(args, k) is not None}
    if labels is not None and len(labels) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels; they must describe the same examples")
    keep = select(scores, keep=args.keep, strategy=args.strategy, labels=labels, seed=args.seed, **options)
    save_array(args.out, keep, column="index")
    emit(args, {"strategy": args.strategy, "kept": len(keep), "of": len(scores), "out": args.out},
         f"kept {len(keep)} of {len(scores)} examples ({args.strategy}); indices in {args.out}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from ..bench.data_pruning import compare_pruning

    train = _dataset(args.data, args.limit)
    test = _dataset(args.data, args.test_limit, "test")
    result = compare_pruning(train, test, _model_fn(args), fractions=tuple(args.fractions), methods=tuple(args.methods),
                             epochs=args.epochs, score_epochs=args.score_epochs, n_models=args.n_models,
                             n_clusters=args.n_clusters, ccs_beta=args.ccs_beta, lr=args.lr,
                             batch_size=args.batch_size, seed=args.seed,
                             progress=not (args.quiet or args.json), log=lambda s: say(args, s))
    emit(args, {"rows": result.rows, "full_accuracy": result.full_accuracy, "score_seconds": result.score_seconds},
         result.table())
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from ..data import embed_shards

    _check_paths(args, ("out",), ("texts",))
    report = embed_shards(args.texts, args.out, column=args.column, model=args.model,
                          embedding_column=args.embedding_column, id_column=args.id_column,
                          batch_size=args.batch_size, max_length=args.max_length, dtype=args.dtype,
                          file_format=args.format, engine=args.engine, address=args.address, workers=args.workers,
                          overwrite=args.overwrite, progress=not (args.quiet or args.json))
    emit(args, report.to_dict(), str(report))
    return 0


def _clustering(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_clusters": args.clusters, "sample": args.sample, "niter": args.niter, "seed": args.seed,
            "batch_size": args.batch_size, "partition_rows": args.partition_rows, "prefer": args.prefer,
            "engine": args.engine, "address": args.address, "workers": args.workers, "work": args.work,
            "keep_work": args.keep_work, "overwrite": args.overwrite, "progress": not (args.quiet or args.json),
            "say": lambda s: say(args, s)}


def _run_dedup(args: argparse.Namespace) -> int:
    from ..data import dedup

    report = dedup(args.emb, eps=args.eps, out=args.out, pairs_out=args.pairs_out, subset=args.subset,
                   **_clustering(args))
    emit(args, report.to_dict(), str(report))
    return 0


def _run_density(args: argparse.Namespace) -> int:
    from ..data import density

    report = density(args.emb, keep=args.keep, temperature=args.temperature, neighbors=args.neighbors,
                     min_keep=args.min_keep, out=args.out, subset=args.subset, **_clustering(args))
    emit(args, report.to_dict(), str(report))
    return 0


def _engine_flags(p: argparse.ArgumentParser) -> None:
    from ..data.web import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="local", help="run here (local) or on Ray")
    p.add_argument("--address", help="with --engine ray: a running cluster ('auto', HOST:PORT, ray://HOST:PORT); "
                                     "without it a local Ray is started")
    p.add_argument("--workers", type=_positive_int, help="with --engine ray: CPUs of the local Ray / actors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--emb", required=True, help="embedding folder (from `prunekit data embed`) or an (N, d) .npy")
    p.add_argument("--clusters", type=_positive_int, required=True, help="k-means clusters")
    p.add_argument("--sample", type=_positive_int, help="examples that train k-means (default max(100000, 64·k))")
    p.add_argument("--niter", type=_positive_int, default=20, help="k-means iterations")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--prefer", choices=("hard", "easy", "random"), default="hard",
                   help="which members a cluster keeps first: hard = farthest from the centroid")
    p.add_argument("--subset", help="consider only these example indices (.npy/.parquet, e.g. dedup's --out)")
    p.add_argument("--batch-size", type=_positive_int, default=8192, help="rows per assignment batch")
    p.add_argument("--partition-rows", type=_positive_int, default=100_000,
                   help="examples per partition of the per-cluster pass (bounds its memory)")
    p.add_argument("--work", help="resumable work folder (default OUT.work)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder after success")
    p.add_argument("--out", required=True, help="kept indices (.npy or .parquet, column 'index', as `data select` writes)")
    _engine_flags(p)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prunekit data`` with its ``score``, ``select``, ``bench``, ``embed``, ``dedup`` and
    ``density`` subcommands."""
    from ..bench.data_pruning import BENCH_METHODS
    from ..data import SCORES, STRATEGIES

    parser = subparsers.add_parser("data", help="data pruning: score examples, select a subset, compare strategies")
    subs = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def model_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", choices=("mlp", "smallcnn"), help="proxy model (default: mlp for digits, smallcnn otherwise)")
        p.add_argument("--widths", type=_positive_int, nargs=3, default=[16, 32, 64], help="SmallCNN widths")
        p.add_argument("--n-models", type=_positive_int, default=1, help="proxy models to average over")
        p.add_argument("--n-clusters", type=_positive_int, default=50, help="k-means clusters (prototypes, density)")
        p.add_argument("--seed", type=_nonnegative_int, default=0)

    p = add_common(subs.add_parser("score", help="one score per example, higher = harder"))
    p.add_argument("--data", required=True, help=f"{' | '.join(BUILTIN)} | EMB.npy (N×d) | TEXTS.parquet with --text-column")
    p.add_argument("--text-column", help="column of texts in a .parquet --data (embedded with all-MiniLM-L6-v2)")
    p.add_argument("--limit", type=_positive_int, help="use the first N examples")
    p.add_argument("--method", choices=SCORES, default="el2n")
    p.add_argument("--epochs", type=_nonnegative_float, default=1.0, help="training epochs of each proxy model")
    p.add_argument("--out", required=True, help="scores file (.npy or .parquet)")
    p.add_argument("--clusters-out", help="with --method density: also write each example's cluster id")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    model_flags(p)
    p.set_defaults(func=_run_score)

    p = add_common(subs.add_parser("select", help="indices of the examples to keep"))
    p.add_argument("--scores", required=True, help="scores file (.npy or .parquet)")
    p.add_argument("--column", help="column of a multi-column .parquet scores file")
    p.add_argument("--keep", type=float, required=True, help="fraction to keep, in (0, 1]")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="hardest")
    p.add_argument("--labels", help="class (or, for density, cluster) ids file (.npy or .parquet)")
    p.add_argument("--data", choices=BUILTIN, help="take class labels from a built-in data set")
    p.add_argument("--limit", type=_positive_int, help="with --data: the first N examples")
    p.add_argument("--beta", type=float, help="CCS: hardest fraction cut first (default 0.1)")
    p.add_argument("--bins", type=_positive_int, help="CCS: score strata (default 50)")
    p.add_argument("--temperature", type=_positive_float, help="density: softmax temperature (default 0.1)")
    p.add_argument("--min-keep", type=_nonnegative_int, help="density: at least this many per cluster (default 0)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--out", required=True, help="indices file (.npy or .parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run_select)

    p = add_common(subs.add_parser("bench", help="test accuracy per strategy and kept fraction"))
    p.add_argument("--data", choices=BUILTIN, default="digits")
    p.add_argument("--limit", type=_positive_int, help="training examples")
    p.add_argument("--test-limit", type=_positive_int, help="test examples")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3, 0.1])
    p.add_argument("--methods", nargs="+", choices=BENCH_METHODS, default=list(BENCH_METHODS))
    p.add_argument("--epochs", type=_positive_int, default=5, help="epochs over each kept subset")
    p.add_argument("--score-epochs", type=_nonnegative_float, default=1.0, help="epochs of each EL2N proxy")
    p.add_argument("--ccs-beta", type=float, default=0.1, help="CCS: hardest fraction cut first")
    p.add_argument("--lr", type=_positive_float, default=0.05)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    model_flags(p)
    p.set_defaults(func=_run_bench)

    p = add_common(subs.add_parser("embed", help="embed Parquet text shards into an embedding folder (resumable)"))
    p.add_argument("--texts", required=True, nargs="+", help="Parquet shards: files, a folder or a glob")
    p.add_argument("--column", default="text", help="the text column (default: text)")
    p.add_argument("--embedding-column", help="take precomputed embeddings from this column instead of encoding")
    p.add_argument("--id-column", help="keep this column of example ids beside the indices")
    p.add_argument("--model", default="minilm-l6", help="minilm-l6 (all-MiniLM-L6-v2) or a Hugging Face encoder folder")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="texts per encoder batch")
    p.add_argument("--max-length", type=_positive_int, default=256, help="tokens per text (longer are truncated)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--format", choices=("npy", "parquet"), default="npy", help="embedding shard files")
    p.add_argument("--out", required=True, help="embedding folder")
    _engine_flags(p)
    p.set_defaults(func=_run_embed)

    p = add_common(subs.add_parser("dedup", help="SemDeDup: remove semantic near-duplicates inside k-means clusters"))
    _cluster_flags(p)
    p.add_argument("--eps", type=float, required=True, help="remove when cosine similarity > 1 - eps; in (0, 1)")
    p.add_argument("--pairs-out", help="a .parquet of the removed examples and the example each duplicates")
    p.set_defaults(func=_run_dedup)

    p = add_common(subs.add_parser("density", help="DBP: keep a fraction, more of complex concept clusters"))
    _cluster_flags(p)
    p.add_argument("--keep", type=float, required=True, help="fraction of the examples to keep, in (0, 1]")
    p.add_argument("--temperature", type=_positive_float, default=0.1, help="softmax temperature of the budgets")
    p.add_argument("--neighbors", type=_positive_int, default=20, help="nearest centroids that give d_inter")
    p.add_argument("--min-keep", type=_nonnegative_int, default=1, help="at least this many per cluster")
    p.set_defaults(func=_run_density)
    return parser
