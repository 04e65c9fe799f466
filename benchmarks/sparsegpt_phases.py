"""Where one SparseGPT run's CPU seconds and resident memory go, phase by phase: SmolLM2-135M pruned 50% with
issue 26's calibration windows (``--split tenth`` of ``llm_vs_peers.py``), one thread, in this process (loaded
the way the benchmark's child loads it). Each phase (capture, Hessian sums, Cholesky/inverse, column loop, undo
journal, masks, ...) is timed by wrapping its function (process CPU time: the walk runs one thread at a time);
"rest" is what no wrapper covers: the block forwards and the lockstep hand-overs. The resident memory is
sampled every ``--sample-ms`` and its peak kept per phase; user and kernel CPU time and minor page faults come
from ``getrusage``. The sampler costs CPU of its own (about 20% of the samples at 5 ms): read the phases'
shares, not the total, against the benchmark's figure.

    PYTHONPATH=src python benchmarks/sparsegpt_phases.py --seed 0            # the full protocol's seed 0
    PYTHONPATH=src python benchmarks/sparsegpt_phases.py --seed 0 --blocks 4 # SmolLM2 cut to 4 blocks
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import resource
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))


def _vmhwm() -> int:
    """The kernel's high-water mark of this process's resident memory (bytes), since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--blocks", type=int, default=None, help="keep only the first N blocks (quicker)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample-ms", type=float, default=5.0)
    p.add_argument("--no-huge-pages", action="store_true", help="without transparent huge pages (the benchmark's "
                   "child and the prunekit command turn them on)")
    a = p.parse_args()
    if not a.no_huge_pages:  # as llm_vs_peers.py's child does, before any tensor exists
        from prunekit.infra.machine import enable_huge_pages

        enable_huge_pages()
    proc = psutil.Process()
    rss_bare = proc.memory_info().rss
    torch.set_num_threads(1)
    import llm_vs_peers as bench

    import prunekit as pk
    import prunekit.calibrate.blockwise as bw
    import prunekit.calibrate.onepass as op
    import prunekit.calibrate.stats as st
    import prunekit.core.mask as cm
    import prunekit.methods.base as mb
    import prunekit.methods.layerwise as lw
    import prunekit.methods.prune as mp
    import prunekit.methods.sparsegpt as sg
    from prunekit.models.hf import load_model

    rss_imported = proc.memory_info().rss
    phase, peaks, cpu = ["load"], {}, {}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            r = proc.memory_info().rss
            peaks[phase[0]] = max(peaks.get(phase[0], 0), r)
            time.sleep(a.sample_ms / 1000)

    def wrap(owner, name: str, tag: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def timed(*args, **kwargs):
            outer, phase[0] = phase[0], tag
            t = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                cpu[tag] = cpu.get(tag, 0.0) + time.process_time() - t
                phase[0] = outer
        setattr(owner, name, timed)

    for owner, name, tag in [(mp, "plan_prune", "validate"), (bw, "capture_inputs", "capture"),
                             (st, "add_rows_", "hessian"), (sg, "inverse_hessian_factor", "cholesky_inverse"),
                             (sg, "sparsegpt_prune", "column_loop"), (sg, "refit_rows", "refit"),
                             (mb.WeightJournal, "record", "journal"),
                             (lw.BlockwiseMethod, "write_layer_", "write_weights"),
                             (lw, "release_freed_memory", "malloc_trim"), (op, "release_freed_memory", "malloc_trim"),
                             (cm.PackedMasks, "add", "pack_masks"), (cm.PackedMasks, "apply_", "unpack_register_masks"),
                             (mp, "_report", "report")]:
        wrap(owner, name, tag)
    threading.Thread(target=sampler, daemon=True).start()
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    rss_loaded = proc.memory_info().rss
    docs, _ = bench.tenth_split()
    calib = bench.windows_of(tok, docs, a.nsamples, 512, seed=a.seed)
    if a.blocks:
        model.model.layers = model.model.layers[:a.blocks]
        model.config.num_hidden_layers = a.blocks
    del lm, tok, docs
    gc.collect()
    phase[0] = "walk: forwards, lockstep, rest"
    Path("/proc/self/clear_refs").write_text("5")  # the kernel's high-water mark restarts from the current RSS
    before, t0, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    pk.prune_(model, "sparsegpt", 0.5, calibration=calib, progress=False, batch_size=a.batch_size)
    total, wall = time.process_time() - t0, time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    named = sum(cpu.values())
    print(json.dumps({
        "calib_sha256": bench.token_hash(calib), "blocks": a.blocks or len(model.model.layers),
        "rss_mb": {"bare_python": rss_bare / 1e6, "imported": rss_imported / 1e6, "loaded": rss_loaded / 1e6,
                   "end": proc.memory_info().rss / 1e6},
        "peak_mb_per_phase": {k: round(v / 1e6) for k, v in peaks.items()},
        "peak_mb_exact": _vmhwm() / 1e6,
        "prune_cpu_s": round(total, 1), "prune_wall_s": round(wall, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 1), "kernel_s": round(after.ru_stime - before.ru_stime, 1),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "cpu_s_per_phase": {k: round(v, 2) for k, v in cpu.items()}, "rest_cpu_s": round(total - named, 1),
        "load_average": psutil.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
