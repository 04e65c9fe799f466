"""SemDeDup on real text: paragraphs of Python's documentation and of the standard library's docstrings.

Writes the passages as Parquet shards, embeds them with all-MiniLM-L6-v2 (`prunekit data embed`'s
library call), clusters them once and runs SemDeDup at several eps, printing how many passages each
eps removes (and how many of those are exact copies of the text they duplicate), with examples of
removed pairs.

    nice -n 10 python benchmarks/web_dedup_text.py --work /tmp/webtext --threads 1
    nice -n 10 python benchmarks/web_dedup_text.py --embedded-only   # dedup the shards an interrupted embed wrote
"""

from __future__ import annotations

import argparse
import re
import resource
import time
from pathlib import Path

import numpy as np


def passages(min_chars: int = 60) -> tuple[list[str], list[str]]:
    """(text, source) of every paragraph of the Python docs sources and the stdlib docstrings."""
    from prunekit.datasets.text import _stdlib_docstrings, documents

    texts, sources = [], []
    for doc in documents("pydocs") + _stdlib_docstrings():
        for para in re.split(r"\n\s*\n", doc.text):
            para = " ".join(para.split())
            if len(para) >= min_chars and len(para.split()) >= 8:
                texts.append(para)
                sources.append(doc.name)
    return texts, sources


def write_shards(texts: list[str], sources: list[str], folder: Path, rows: int = 5000) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(range(0, len(texts), rows)):
        path = folder / f"passages-{i:03d}.parquet"
        if not path.exists():
            pq.write_table(pa.table({"text": texts[a:a + rows], "source": sources[a:a + rows]}), path)
        paths.append(path)
    return paths


def finished_prefix(folder: Path, texts: list[str]) -> tuple[Path, list[str]]:
    """The leading shards of an unfinished embedding folder, concatenated into one ``.npy`` (their rows
    are the corpus' first rows), and the texts they hold."""
    import json

    info = json.loads((folder / "prunekit.json").read_text())
    parts, n = [], 0
    for s in info["shards"]:
        f = folder / f"{s['name']}.npy"
        if not f.exists() or int(s["offset"]) != n:
            break
        idx = np.load(folder / f"{s['name']}.index.npy")
        assert np.array_equal(idx, np.arange(n, n + int(s["rows"]))), s["name"]
        parts.append(np.load(f))
        n += int(s["rows"])
    if not parts:
        raise SystemExit(f"{folder}: no finished shard to deduplicate; run without --embedded-only first")
    out = folder.parent / f"emb-first-{n}.npy"
    np.save(out, np.concatenate(parts))
    return out, texts[:n]


def short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/prunekit-webtext", help="folder for shards, embeddings and outputs")
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--examples", type=int, default=4, help="removed pairs shown per eps")
    p.add_argument("--embedded-only", action="store_true",
                   help="skip embedding; deduplicate the leading shards an earlier (interrupted) embed finished")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from prunekit.data import dedup, embed_shards
    import pyarrow.parquet as pq

    work = Path(args.work)
    texts, sources = passages()
    shards = write_shards(texts, sources, work / "shards")
    n_docs = len(set(sources))
    print(f"{len(texts):,} passages from {n_docs} documents ({sum(s.startswith('stdlib:') for s in set(sources))} "
          f"stdlib modules), {len(shards)} Parquet shards")
    if args.embedded_only:
        emb, texts = finished_prefix(work / "emb", texts)
        print(f"--embedded-only: the {len(texts):,} passages of the shards already embedded")
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = embed_shards(shards, work / "emb", column="text", model="minilm-l6", batch_size=64,
                           max_length=args.max_length, progress=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"embed: {rep} — {rep.rows_written / wall:.1f} passages/s wall, {cpu:.0f} CPU-s, "
              f"{args.threads} torch thread(s)")
        emb = work / "emb"

    exact_groups = len(texts) - len(set(texts))
    print(f"exact duplicate texts among these {len(texts):,} passages: {exact_groups:,} repeat an earlier one\n")
    rows = []
    shown: dict[float, list[tuple[float, str, str]]] = {}
    for eps in sorted(args.eps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = work / f"keep-eps{eps:g}.parquet"
        pairs = work / f"pairs-eps{eps:g}.parquet"
        r = dedup(emb, n_clusters=args.clusters, eps=eps, out=out, pairs_out=pairs, work=work / "dedup-work",
                  keep_work=True, overwrite=True, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        table = pq.read_table(pairs).to_pydict()
        exact = sum(texts[a] == texts[b] for a, b in zip(table["removed"], table["duplicate_of"]))
        rows.append((eps, r.removed, 100 * r.removed / r.n, exact, r.removed - exact, wall, cpu))
        rng = np.random.default_rng(0)
        near = [i for i, (a, b) in enumerate(zip(table["removed"], table["duplicate_of"])) if texts[a] != texts[b]]
        pick = rng.choice(near, size=min(args.examples, len(near)), replace=False) if near else []
        shown[eps] = [(table["similarity"][i], texts[table["removed"][i]], texts[table["duplicate_of"][i]])
                      for i in sorted(pick, key=lambda i: table["similarity"][i])]
    print(f"| eps | removed | % of {len(texts):,} | exact copies | near (not identical) | wall s | CPU s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for eps, removed, pct, exact, near, wall, cpu in rows:
        print(f"| {eps:g} | {removed:,} | {pct:.1f}% | {exact:,} | {near:,} | {wall:.1f} | {cpu:.1f} |")
    for eps, pairs in shown.items():
        print(f"\nRemoved at eps {eps:g} (cosine > {1 - eps:g}), examples that are not exact copies:")
        for sim, removed, kept in pairs:
            print(f"- cos {sim:.3f}: removed “{short(removed)}”\n  duplicate of “{short(kept)}”")
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
