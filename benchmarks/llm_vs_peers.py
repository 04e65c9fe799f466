"""SmolLM2-135M pruned by prunekit's methods (magnitude, Wanda, SparseGPT in both layer orders, ALPS, RIA,
DSnoT, OWL) and by llm-compressor's ``oneshot`` (SparseGPTModifier, WandaPruningModifier), on the same
calibration windows (their hash is printed), every result evaluated with the same perplexity code.

Reports perplexity over held-out windows of Python's documentation, pruning time (wall and CPU),
peak resident memory during pruning, and each run's CPU time over one plain forward pass across the
calibration tokens.

    # the README's RIA / DSnoT / OWL table (reduced size: what fits a shared 2-core machine; one process per line)
    python benchmarks/llm_vs_peers.py --nsamples 8 --eval-windows 8 --threads 1 --no-forward --sparsity 0.5 --runs wanda,ria,dsnot
    python benchmarks/llm_vs_peers.py --nsamples 8 --eval-windows 8 --threads 1 --no-forward --runs wanda-2:4,ria-2:4,dsnot-2:4
    python benchmarks/llm_vs_peers.py --nsamples 8 --eval-windows 8 --threads 1 --no-forward --sparsity 0.6 --runs wanda,wanda-owl
    python benchmarks/llm_vs_peers.py --nsamples 8 --eval-windows 8 --threads 1 --no-forward --sparsity 0.7 --runs wanda,wanda-owl
    # the SparseGPT table, beside llm-compressor
    python benchmarks/llm_vs_peers.py --nsamples 8 --eval-windows 8 --threads 1 --runs sparsegpt,sparsegpt-seq,llmc-sparsegpt
    # full size of the issue's anchors (one thread, 32 × 512 calibration, 64 × 512 evaluation)
    python benchmarks/llm_vs_peers.py --nsamples 32 --eval-windows 64 --threads 1 --runs sparsegpt,llmc-sparsegpt

Unstructured runs prune ``--sparsity``; runs ending in ``-2:4`` prune 2 of every 4 (50%).

llm-compressor pins its own transformers: install it in a separate environment and point
``--llmc-python`` at it (``python -m venv /work/llmc-venv && /work/llmc-venv/bin/pip install llmcompressor``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

import prunekit as pk
from prunekit.datasets.text import calibration_windows, eval_windows
from prunekit.metrics.perplexity import perplexity
from prunekit.models.hf import load_model

# label: (method, pattern, allocation, options)
PRUNEKIT_RUNS = {
    "magnitude-row": ("magnitude", "row", "uniform", {}),
    "magnitude-layer": ("magnitude", "unstructured", "uniform", {}),
    "magnitude-2:4": ("magnitude", "2:4", "uniform", {}),
    "wanda": ("wanda", "unstructured", "uniform", {}),
    "wanda-2:4": ("wanda", "2:4", "uniform", {}),
    "wanda-owl": ("wanda", "unstructured", "owl", {}),
    # the paper's and llm-compressor's order: every layer of a block calibrated on the dense block
    "sparsegpt": ("sparsegpt", "unstructured", "uniform", {"sequential": "block"}),
    "sparsegpt-2:4": ("sparsegpt", "2:4", "uniform", {"sequential": "block"}),
    "sparsegpt-owl": ("sparsegpt", "unstructured", "owl", {"sequential": "block"}),
    # every layer pruned on the inputs its pruned predecessors give it, one forward per block (the default)
    "sparsegpt-seq": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer"}),
    "sparsegpt-seq-2:4": ("sparsegpt", "2:4", "uniform", {"sequential": "layer"}),
    "sparsegpt-seq-owl": ("sparsegpt", "unstructured", "owl", {"sequential": "layer"}),
    # the same computation with the Hessian summed in another order: how much do rounding-level
    # differences alone move the perplexity (mask decisions are chaotic)?
    "sparsegpt-b4": ("sparsegpt", "unstructured", "uniform", {"batch_size": 4, "sequential": "block"}),
    "alps": ("alps", "unstructured", "uniform", {"sequential": "block"}),
    "alps-seq": ("alps", "unstructured", "uniform", {"sequential": "layer"}),
    "alps-2:4": ("alps", "2:4", "uniform", {"sequential": "block"}),
    "alps-seq-2:4": ("alps", "2:4", "uniform", {"sequential": "layer"}),
    "alps-seq-60it": ("alps", "unstructured", "uniform", {"sequential": "layer", "max_iter": 60, "switch_iter": 15}),
    "alps-seq-60it-2:4": ("alps", "2:4", "uniform", {"sequential": "layer", "max_iter": 60, "switch_iter": 15}),
    "wanda-owl-l20": ("wanda", "unstructured", "owl", {"owl_lambda": 0.2}),
    # RIA: relative importance × ‖X‖^0.5 over the whole layer; 2:4 with free channel permutations
    "ria": ("ria", "unstructured", "uniform", {}),
    "ria-2:4": ("ria", "2:4", "uniform", {}),
    "ria-2:4-noperm": ("ria", "2:4", "uniform", {"channel_permutation": False}),
    # DSnoT on Wanda's mask: attention layers refined (the paper's code skips the MLPs), or every layer
    "dsnot": ("dsnot", "unstructured", "uniform", {}),
    "dsnot-all": ("dsnot", "unstructured", "uniform", {"skip": []}),
    "dsnot-2:4": ("dsnot", "2:4", "uniform", {}),
    "dsnot-all-2:4": ("dsnot", "2:4", "uniform", {"skip": []}),
    "dsnot-ria": ("dsnot", "unstructured", "uniform", {"initial": "ria", "skip": []}),
    "sparsegpt-seq-owl-l20": ("sparsegpt", "unstructured", "owl", {"sequential": "layer", "owl_lambda": 0.2}),
}
DEFAULT_RUNS = ("wanda", "llmc-wanda", "sparsegpt", "sparsegpt-seq", "llmc-sparsegpt", "ria", "dsnot")
PEER_RUNS = {
    "llmc-sparsegpt": ("sparsegpt", "0:0"),
    "llmc-sparsegpt-2:4": ("sparsegpt", "2:4"),
    "llmc-wanda": ("wanda", "0:0"),
    "llmc-wanda-2:4": ("wanda", "2:4"),
}


class PeakRSS:
    """Samples this process's resident memory every 50 ms while active; ``peak`` is the highest seen,
    ``start`` the resident memory when sampling began."""

    def __init__(self) -> None:
        self.peak = self.start = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows (anchors: 64 Wanda, 32 SparseGPT)")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity (anchors: 64)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--sparsity", type=float, default=0.5, help="for the unstructured runs (2:4 is 50%%)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (anchors: 1)")
    p.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                   help=f"comma-separated subset of {', '.join(list(PRUNEKIT_RUNS) + list(PEER_RUNS))} "
                        f"(default: {','.join(DEFAULT_RUNS)})")
    p.add_argument("--llmc-python", default="/work/llmc-venv/bin/python", help="Python of llm-compressor's venv")
    p.add_argument("--no-forward", action="store_true",
                   help="skip timing one plain forward over the calibration tokens (saves its time; no CPU/forward column)")
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in PRUNEKIT_RUNS and r not in PEER_RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}")

    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    calib = calibration_windows(tok, "pydocs", a.nsamples, a.seqlen, seed=0)
    evalw = eval_windows(tok, "pydocs", a.eval_windows, a.seqlen)
    print(f"calibration {tuple(calib.shape)} sha256 {token_hash(calib)}, evaluation {tuple(evalw.shape)} "
          f"sha256 {token_hash(evalw)} (the same tensors for every run and both tools)", flush=True)
    rows: list[dict] = []

    def evaluate(label: str, seconds: float | None, cpu: float | None, peak: int | None, impl: str,
                 start_rss: int | None = None) -> None:
        ppl = perplexity(model, evalw, progress=False)
        rows.append({"run": label, "perplexity": ppl, "seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak,
                     "start_rss": start_rss, "impl": impl, "sparsity": pk.summary(model).scope_sparsity})
        print(f"{label:<22} ppl {ppl:9.2f}  time {seconds or 0:7.1f} s  CPU {cpu or 0:7.1f} s  "
              f"peak {(peak or 0) / 1e9:5.2f} GB", flush=True)
        if a.json:  # after every run, so that a killed benchmark keeps what it measured
            Path(a.json).write_text(json.dumps({"settings": vars(a), "rows": rows}, indent=2))

    evaluate("dense", None, None, None, "-")
    forward_s = forward_cpu = None
    if not a.no_forward:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for b in calib.split(8):
                model(input_ids=b, use_cache=False)
        forward_s, forward_cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"one plain forward over the calibration tokens: {forward_s:.1f} s ({forward_cpu:.1f} s CPU)", flush=True)

    for label in runs:
        if label in PRUNEKIT_RUNS:
            method, pattern, allocation, options = PRUNEKIT_RUNS[label]
            sparsity = None if ":" in pattern else a.sparsity
            with PeakRSS() as mem:
                t, cpu = time.perf_counter(), time.process_time()
                pk.prune_(model, method, sparsity, pattern=pattern, allocation=allocation, calibration=calib,
                          progress=False, **options)
                seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            pk.finalize_(model)
            evaluate(label, seconds, cpu, mem.peak, "prunekit", mem.start)
        else:
            seconds, cpu, peak, start_rss = run_peer(a, label, model, tok, calib)
            evaluate(label, seconds, cpu, peak, "llm-compressor", start_rss)
        model.load_state_dict(dense_state)

    print_table(rows, forward_s, forward_cpu, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "forward_s": forward_s, "forward_cpu_s": forward_cpu,
                                            "rows": rows}, indent=2))
    return 0


def token_hash(ids: torch.Tensor) -> str:
    """A short hash of a token tensor (to show that two runs saw the same windows)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:12]


def run_peer(a: argparse.Namespace, label: str, model: torch.nn.Module, tok,
             calib: torch.Tensor) -> tuple[float, float, int, int]:
    """Prune a copy of the dense model with llm-compressor in its own venv; load its weights into ``model``."""
    method, pattern = PEER_RUNS[label]
    with tempfile.TemporaryDirectory(prefix="llmc-") as tmp:
        folder = Path(tmp) / "dense"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        torch.save(calib, Path(tmp) / "calib.pt")
        out = Path(tmp) / "pruned.pt"
        cmd = [a.llmc_python, str(Path(__file__).with_name("_llmc_peer.py")), "--model", str(folder),
               "--calib", str(Path(tmp) / "calib.pt"), "--method", method, "--pattern", pattern,
               "--out", str(out), "--threads", str(a.threads),
               "--sparsity", str(0.5 if pattern != "0:0" else a.sparsity)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"llm-compressor run {label} failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        state = torch.load(out)
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return result["seconds"], result["cpu_seconds"], result["peak_rss"], result["start_rss"]


def print_table(rows: list[dict], forward_s: float | None, forward_cpu: float | None, a: argparse.Namespace) -> None:
    """The results as a Markdown table (CPU seconds are the process's, robust to other load on the machine)."""
    fwd = "not timed" if forward_cpu is None else f"{forward_s:.1f} s wall, {forward_cpu:.1f} s CPU"
    print(f"\nSmolLM2-135M fp32, {a.sparsity:.0%} (2:4 runs 50%): calibration {a.nsamples}×{a.seqlen}, perplexity over {a.eval_windows}×{a.seqlen} "
          f"held-out tokens of Python's docs, {a.threads} thread(s); one plain forward over the calibration "
          f"tokens {fwd}\n")
    print("| run | implementation | sparsity in scope | perplexity | pruning time (wall) | CPU time | "
          "CPU time / forward | peak RSS (added while pruning) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = "–" if r["seconds"] is None else f"{r['seconds']:.1f} s"
        c = "–" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f} s"
        ratio = "–" if r["cpu_seconds"] is None or forward_cpu is None else f"{r['cpu_seconds'] / forward_cpu:.2f}×"
        peak = "–" if r["peak_rss"] is None else \
            f"{r['peak_rss'] / 1e9:.2f} GB (+{(r['peak_rss'] - (r['start_rss'] or r['peak_rss'])) / 1e9:.2f})"
        print(f"| {r['run']} | {r['impl']} | {r['sparsity']:.2%} | {r['perplexity']:.2f} | {t} | {c} | {ratio} | {peak} |")


if __name__ == "__main__":
    raise SystemExit(main())
