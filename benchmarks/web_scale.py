"""SemDeDup and DBP at scale on synthetic embeddings: throughput and peak memory, one process vs a
local Ray with 2 workers, as the data grows (1×, 2×, 4×).

The data: a mixture of ``--concepts`` directions on the unit sphere in 384 dimensions (noise chosen so
that members of a concept have cosine ≈ 0.5 to each other), 10% of the rows near-copies (cosine ≈ 0.999)
of another row of their shard; float16 Parquet shards of 100,000 rows, converted once into an
embedding folder by ``embed_shards`` (precomputed column). Every measured run is a fresh process
(``--one``) watched by this one: wall time, CPU seconds of the whole process tree, and the peak of the
summed proportional set size (PSS, shared pages split between processes) of the tree — for Ray that
includes its daemons and workers.

    nice -n 10 python benchmarks/web_scale.py --base 500000 --scales 1 2 4 --clusters 1000
    nice -n 10 python benchmarks/web_scale.py --base 2000000 --scales 1 --engines local --steps dedup   # one cell
    nice -n 10 python benchmarks/web_scale.py --ray-idle       # what an idle local Ray costs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

D = 384
SHARD = 100_000


def generate(folder: Path, n: int, concepts: int, seed: int = 0) -> list[Path]:
    """Parquet shards of ``n`` synthetic embeddings (float16 fixed-size lists); shard i is the same for
    every ``n`` (so 2× holds 1× and more)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    centers = np.random.default_rng(seed).standard_normal((concepts, D)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    paths = []
    for i, a in enumerate(range(0, n, SHARD)):
        rows = min(SHARD, n - a)
        path = folder / f"part-{i:04d}-{rows}.parquet"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])
        which = rng.integers(0, concepts, rows)
        x = centers[which] + rng.standard_normal((rows, D)).astype(np.float32) / np.sqrt(D)
        dup = rng.choice(rows, rows // 10, replace=False)
        src = rng.integers(0, rows, len(dup))
        x[dup] = x[src] + 0.03 * rng.standard_normal((len(dup), D)).astype(np.float32) / np.sqrt(D)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        flat = pa.array(x.astype(np.float16).reshape(-1), type=pa.float16())
        pq.write_table(pa.table({"emb": pa.FixedSizeListArray.from_arrays(flat, D)}), path)
    return paths


def one(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    if args.one == "ray-idle":  # what a local Ray costs before any work: daemons and 2 idle workers
        from prunekit.data.web.engine import RayEngine

        t0 = time.perf_counter()
        engine = RayEngine(workers=2, progress=False)
        time.sleep(20)
        engine.close()
        print(json.dumps({"kept": 0, "n": 0, "seconds": time.perf_counter() - t0}), flush=True)
        return
    from prunekit.data import dedup, density

    settings = {"n_clusters": args.clusters, "engine": args.engine, "progress": False, "overwrite": True,
                "out": args.out, "workers": 2 if args.engine == "ray" else None}
    t0 = time.perf_counter()
    if args.one == "dedup":
        r = dedup(args.emb, eps=args.eps, **settings)
        result = {"kept": r.kept, "n": r.n}
    else:
        r = density(args.emb, keep=args.keep, **settings)
        result = {"kept": r.kept, "n": r.n}
    print(json.dumps({**result, "seconds": time.perf_counter() - t0}), flush=True)


class Watch(threading.Thread):
    """Polls a process tree: peak summed PSS and the last CPU times of every process seen."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.every, self.peak, self.cpu, self.done = every, 0, {}, False

    def run(self) -> None:
        import psutil

        while not self.done:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def measure(argv: list[str]) -> dict:
    # No OMP_NUM_THREADS: the single process uses every core through BLAS; Ray gives each worker one.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, env=env)
    watch = Watch(proc.pid)
    watch.start()
    out, _ = proc.communicate()
    watch.done = True
    watch.join()
    if proc.returncode != 0:
        raise SystemExit(f"run {argv} failed ({proc.returncode})")
    line = json.loads(out.strip().splitlines()[-1])
    return {**line, "peak_mb": watch.peak / 2**20, "cpu_s": sum(watch.cpu.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/prunekit-webscale")
    p.add_argument("--base", type=int, default=500_000, help="rows at scale 1×")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--concepts", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--keep", type=float, default=0.3)
    p.add_argument("--engines", nargs="+", default=["local", "ray"])
    p.add_argument("--steps", nargs="+", choices=("dedup", "density"), default=["dedup", "density"])
    p.add_argument("--one", choices=("dedup", "density", "ray-idle"), help=argparse.SUPPRESS)
    p.add_argument("--ray-idle", action="store_true", help="only measure a local Ray started and left idle")
    p.add_argument("--emb", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)

    if args.ray_idle:
        r = measure(["--one", "ray-idle"])
        print(f"local Ray (2 CPUs) started and idle for 20 s: peak PSS {r['peak_mb']:.0f} MB, {r['cpu_s']:.1f} CPU-s")
        return
    from prunekit.data import embed_shards

    work = Path(args.work)
    rows = []
    for scale in args.scales:
        n = args.base * scale
        shards = generate(work / "parquet", n, args.concepts)
        emb = work / f"emb-{n}"
        t0 = time.perf_counter()
        rep = embed_shards(shards, emb, embedding_column="emb", progress=False)
        print(f"{n:,} rows: embedding folder in {time.perf_counter() - t0:.0f} s ({rep.written} shards written)",
              flush=True)
        results = {}
        for step in args.steps:
            for engine in args.engines:
                out = work / f"keep-{step}-{engine}-{n}.npy"
                r = measure(["--one", step, "--emb", str(emb), "--engine", engine, "--out", str(out),
                             "--clusters", str(args.clusters), "--eps", str(args.eps), "--keep", str(args.keep)])
                results[(step, engine)] = np.load(out)
                rows.append((n, step, engine, r))
                print(f"{n:,} {step:8s} {engine:5s}: {r['seconds']:7.1f} s wall, {r['cpu_s']:7.1f} CPU-s, "
                      f"{n / r['seconds']:9,.0f} rows/s, peak PSS {r['peak_mb']:6.0f} MB, kept {r['kept']:,}",
                      flush=True)
            if len(args.engines) == 2:
                same = np.array_equal(results[(step, "local")], results[(step, "ray")])
                print(f"{n:,} {step}: local and ray kept {'the same' if same else 'DIFFERENT'} indices", flush=True)
        for f in work.glob(f"keep-*-{n}.npy"):
            f.unlink()
    print("\n| rows | step | engine | wall s | CPU s | rows/s | peak memory (PSS, MB) | kept |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for n, step, engine, r in rows:
        print(f"| {n:,} | {step} | {engine} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {n / r['seconds']:,.0f} | "
              f"{r['peak_mb']:.0f} | {r['kept']:,} |")


if __name__ == "__main__":
    main()
