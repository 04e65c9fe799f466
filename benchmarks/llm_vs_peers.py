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
    # issue 26's protocol: every tenth .rst.txt (sorted by path) held out, three calibration seeds, every
    # tool pruning in a fresh process of its own (so peak RSS compares like with like)
    python benchmarks/llm_vs_peers.py --split tenth --seeds 0,1,2 --isolate --nsamples 32 --eval-windows 64 \
        --threads 1 --no-forward --runs sparsegpt-seq,llmc-sparsegpt --peer-cache /tmp/llmc-cache --json out.json

``--split tenth`` holds out every tenth ``.rst.txt`` file of the Python docs' ``_sources`` (sorted by path,
the 10th, 20th, …) and calibrates on the rest; ``--split hash`` (the default) is the library's own split
(a hash of each file's name, :mod:`prunekit.datasets.text`). ``--peer-cache`` keeps each llm-compressor
result (pruned weights, its timing and memory, its perplexity per evaluation hash) under the hash of its
calibration windows and settings, so that a later run reuses it instead of pruning again.

Unstructured runs prune ``--sparsity``; runs ending in ``-2:4`` prune 2 of every 4 (50%).

llm-compressor pins its own transformers: install it in a separate environment and point
``--llmc-python`` at it (``python -m venv /work/venvs/llmc && /work/venvs/llmc/bin/pip install
torch==2.13.0 llmcompressor==0.14.* psutil datasets``).
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
from prunekit.datasets.text import PYDOCS_DIR, calibration_windows, eval_windows, start_token
from prunekit.infra.machine import enable_huge_pages
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
    # the default with each layer's columns visited in decreasing input energy (GPTQ's act-order)
    "sparsegpt-energy": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "column_order": "energy"}),
    # the kept weights refit on their support by conjugate gradients after the column loop (the default: 2 steps)
    "sparsegpt-norefit": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "refit_iters": 0}),
    "sparsegpt-refit1": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "refit_iters": 1}),
    "sparsegpt-refit2": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "refit_iters": 2}),
    "sparsegpt-refit3": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "refit_iters": 3}),
    "sparsegpt-refit10": ("sparsegpt", "unstructured", "uniform", {"sequential": "layer", "refit_iters": 10}),
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
    """Peak resident memory while active. On Linux, exact: the kernel's high-water mark (``VmHWM``), reset to the
    current resident size on entry (``/proc/self/clear_refs``), read on exit. Elsewhere, and beside it as
    ``sampled``: the highest of samples every 50 ms, which misses spikes shorter than that. ``start`` is the
    resident memory on entry."""

    def __init__(self) -> None:
        self.peak = self.sampled = self.start = psutil.Process().memory_info().rss
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.sampled = max(self.sampled, proc.memory_info().rss)
            time.sleep(0.05)

    @staticmethod
    def _hwm():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = self._hwm() is not None
        except OSError:
            self.exact = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = self._hwm() if self.exact else None
        self.peak = max(self.sampled, hwm) if hwm is not None else self.sampled


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
    p.add_argument("--split", choices=["hash", "tenth"], default="hash",
                   help="held-out documents: the library's hash split, or every tenth file sorted by path")
    p.add_argument("--seeds", default="0", help="comma-separated calibration seeds (each run once per seed)")
    p.add_argument("--no-huge-pages", action="store_true",
                   help="prunekit's pruning process without transparent huge pages (the prunekit command turns "
                        "them on, infra.machine.enable_huge_pages; llm-compressor's process never has them)")
    p.add_argument("--isolate", action="store_true",
                   help="prune with prunekit in a fresh process too (as llm-compressor always is): peak RSS of "
                        "a process that loads the model and prunes it, the same measure for both tools")
    p.add_argument("--peer-cache", help="folder keeping llm-compressor's results by calibration hash and settings")
    p.add_argument("--llmc-python", default="/work/venvs/llmc/bin/python", help="Python of llm-compressor's venv")
    p.add_argument("--no-forward", action="store_true",
                   help="skip timing one plain forward over the calibration tokens (saves its time; no CPU/forward column)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense model's perplexity")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: prune one prunekit run in this process
    p.add_argument("--child-calib", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        return child_main(a)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in PRUNEKIT_RUNS and r not in PEER_RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}")
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]

    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    if a.split == "tenth":
        calib_docs, eval_docs = tenth_split()
        evalw = windows_of(tok, eval_docs, a.eval_windows, a.seqlen)
    else:
        evalw = eval_windows(tok, "pydocs", a.eval_windows, a.seqlen)
    print(f"evaluation {tuple(evalw.shape)} sha256 {token_hash(evalw)}, split {a.split}", flush=True)
    rows: list[dict] = []

    def save() -> None:
        if a.json:  # after every run, so that a killed benchmark keeps what it measured
            Path(a.json).write_text(json.dumps({"settings": vars(a), "forward_s": forward_s,
                                                "forward_cpu_s": forward_cpu, "rows": rows}, indent=2))

    def evaluate(label: str, seed: int | None, calib_hash: str | None, seconds: float | None, cpu: float | None,
                 peak: int | None, impl: str, start_rss: int | None = None, ppl: float | None = None,
                 exact: bool | None = None) -> float:
        if ppl is None:
            ppl = perplexity(model, evalw, progress=False)
        rows.append({"run": label, "seed": seed, "calib_sha256": calib_hash, "perplexity": ppl, "seconds": seconds,
                     "cpu_seconds": cpu, "peak_rss": peak, "start_rss": start_rss, "impl": impl,
                     "peak_rss_measure": None if peak is None else
                     "kernel high-water mark" if exact else "50 ms samples",
                     "sparsity": pk.summary(model).scope_sparsity})
        print(f"{label:<22} seed {seed if seed is not None else '-'}  ppl {ppl:9.3f}  time {seconds or 0:7.1f} s  "
              f"CPU {cpu or 0:7.1f} s  peak {(peak or 0) / 1e9:5.3f} GB", flush=True)
        save()
        return ppl

    forward_s = forward_cpu = None
    if not a.no_dense:
        evaluate("dense", None, None, None, None, None, "-")
    for seed in seeds:
        if a.split == "tenth":
            calib = windows_of(tok, calib_docs, a.nsamples, a.seqlen, seed=seed)
        else:
            calib = calibration_windows(tok, "pydocs", a.nsamples, a.seqlen, seed=seed)
        calib_hash = token_hash(calib)
        print(f"seed {seed}: calibration {tuple(calib.shape)} sha256 {calib_hash} (the same tensor for every run "
              "and both tools)", flush=True)
        if not a.no_forward and forward_cpu is None:
            start, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for b in calib.split(8):
                    model(input_ids=b, use_cache=False)
            forward_s, forward_cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"one plain forward over the calibration tokens: {forward_s:.1f} s ({forward_cpu:.1f} s CPU)",
                  flush=True)
        for label in runs:
            if label in PRUNEKIT_RUNS and a.isolate:
                seconds, cpu, peak, start_rss, exact = run_isolated(a, label, model, calib)
                evaluate(label, seed, calib_hash, seconds, cpu, peak, "prunekit", start_rss, exact=exact)
            elif label in PRUNEKIT_RUNS:
                method, pattern, allocation, options = PRUNEKIT_RUNS[label]
                sparsity = None if ":" in pattern else a.sparsity
                with PeakRSS() as mem:
                    t, cpu = time.perf_counter(), time.process_time()
                    pk.prune_(model, method, sparsity, pattern=pattern, allocation=allocation, calibration=calib,
                              progress=False, **options)
                    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
                pk.finalize_(model)
                evaluate(label, seed, calib_hash, seconds, cpu, mem.peak, "prunekit", mem.start, exact=mem.exact)
            else:
                key = peer_key(a, label, calib_hash)
                cached = load_peer_cache(a.peer_cache, key, model)
                if cached is None:
                    result = run_peer(a, label, model, tok, calib)
                else:
                    result = cached
                    print(f"{label}: llm-compressor's result for calibration {calib_hash} read from {a.peer_cache}",
                          flush=True)
                ppl = result.get("perplexity", {}).get(token_hash(evalw))
                ppl = evaluate(label, seed, calib_hash, result["seconds"], result["cpu_seconds"], result["peak_rss"],
                               "llm-compressor", result["start_rss"], ppl, exact=result.get("peak_exact", False))
                if a.peer_cache:
                    save_peer_cache(a.peer_cache, key, model, result, token_hash(evalw), ppl)
            model.load_state_dict(dense_state)

    print_table(rows, forward_s, forward_cpu, a)
    print_summary(rows)
    save()
    return 0


def tenth_split(folder: Path = PYDOCS_DIR) -> tuple[list[str], list[str]]:
    """The texts of Python's ``.rst.txt`` doc sources sorted by path: (calibration, held out), every tenth file
    (the 10th, 20th, …) held out."""
    files = sorted(folder.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no .rst.txt files under {folder} (apt-get install python3.11-doc)")
    texts = [f.read_text(errors="replace") for f in files]
    return ([t for i, t in enumerate(texts) if i % 10 != 9], [t for i, t in enumerate(texts) if i % 10 == 9])


def windows_of(tok, texts: list[str], n: int, seqlen: int, seed: int | None = None) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens from ``texts`` (each text ending in a blank line): with ``seed``, the
    texts are shuffled and ``n`` of the disjoint windows of their first 2·n·seqlen tokens are drawn (as
    :func:`prunekit.datasets.text.calibration_windows` does); without, the first ``n`` windows in order."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    order = torch.randperm(len(texts), generator=gen).tolist() if gen is not None else range(len(texts))
    need = n * seqlen * (2 if gen is not None else 1)
    ids: list[int] = []
    for i in order:
        ids.extend(tok(texts[i] + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    if len(ids) < n * seqlen:
        raise SystemExit(f"only {len(ids)} tokens for {n} windows of {seqlen}")
    ids_t = torch.tensor(ids[: len(ids) // seqlen * seqlen], dtype=torch.long).reshape(-1, seqlen)
    if gen is None:
        w = ids_t[:n].clone()
    else:
        w = ids_t[torch.randperm(ids_t.shape[0], generator=gen)[:n].sort().values].clone()
    bos = start_token(tok)
    if bos is not None:
        w[:, 0] = bos
    return w


def child_main(a: argparse.Namespace) -> int:
    """Load the model in this fresh process, prune it with one prunekit run, save its weights, print one JSON line
    (the same measures ``_llmc_peer.py`` takes for llm-compressor)."""
    method, pattern, allocation, options = PRUNEKIT_RUNS[a.child]
    if not a.no_huge_pages:  # as the ``prunekit`` command does before any tensor exists
        enable_huge_pages()
    model = load_model("smollm2-135m").model
    calib = torch.load(a.child_calib)
    sparsity = None if ":" in pattern else a.sparsity
    with PeakRSS() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        pk.prune_(model, method, sparsity, pattern=pattern, allocation=allocation, calibration=calib,
                  progress=False, **options)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    pk.finalize_(model)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, a.child_out)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": mem.peak, "start_rss": mem.start,
                      "peak_rss_sampled": mem.sampled, "peak_exact": mem.exact}))
    return 0


def run_isolated(a: argparse.Namespace, label: str, model: torch.nn.Module,
                 calib: torch.Tensor) -> tuple[float, float, int, int, bool]:
    """Prune with prunekit in a fresh process of this script; load its weights into ``model``."""
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as tmp:
        torch.save(calib, Path(tmp) / "calib.pt")
        out = Path(tmp) / "pruned.pt"
        cmd = [sys.executable, __file__, "--child", label, "--child-calib", str(Path(tmp) / "calib.pt"),
               "--child-out", str(out), "--threads", str(a.threads), "--sparsity", str(a.sparsity)]
        cmd += ["--no-huge-pages"] if a.no_huge_pages else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"prunekit run {label} failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        model.load_state_dict(torch.load(out))
    return result["seconds"], result["cpu_seconds"], result["peak_rss"], result["start_rss"], result.get("peak_exact", False)


def peer_key(a: argparse.Namespace, label: str, calib_hash: str) -> str:
    """The cache key of one llm-compressor run: its calibration windows and every setting that changes it."""
    method, pattern = PEER_RUNS[label]
    sparsity = 0.5 if pattern != "0:0" else a.sparsity
    return f"{label}-{calib_hash}-s{sparsity}-t{a.threads}"


def load_peer_cache(folder: str | None, key: str, model: torch.nn.Module) -> dict | None:
    """A cached llm-compressor result (its weights loaded into ``model``), or None."""
    if not folder or not (Path(folder) / f"{key}.json").is_file():
        return None
    state = torch.load(Path(folder) / f"{key}.pt")
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return json.loads((Path(folder) / f"{key}.json").read_text())


def save_peer_cache(folder: str, key: str, model: torch.nn.Module, result: dict, eval_hash: str, ppl: float) -> None:
    """Keep an llm-compressor result: its pruned weights, timings, memory and perplexity per evaluation hash."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    if not (Path(folder) / f"{key}.pt").is_file():
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, Path(folder) / f"{key}.pt")
    result = {**result, "perplexity": {**result.get("perplexity", {}), eval_hash: ppl}}
    (Path(folder) / f"{key}.json").write_text(json.dumps(result, indent=2))


def print_summary(rows: list[dict]) -> None:
    """Per run over the seeds: mean perplexity and its spread (min–max), mean CPU time and peak RSS."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        if r["seed"] is not None:
            by_run.setdefault(r["run"], []).append(r)
    if not by_run:
        return
    print("\n| run | seeds | perplexity mean (min–max) | CPU time mean (min–max) | peak RSS mean (max) |")
    print("|---|---|---|---|---|")
    for run, rs in by_run.items():
        ppl = [r["perplexity"] for r in rs]
        cpu = [r["cpu_seconds"] for r in rs]
        peak = [r["peak_rss"] for r in rs]
        print(f"| {run} | {len(rs)} | {sum(ppl) / len(ppl):.3f} ({min(ppl):.3f}–{max(ppl):.3f}) | "
              f"{sum(cpu) / len(cpu):.1f} s ({min(cpu):.1f}–{max(cpu):.1f}) | "
              f"{sum(peak) / len(peak) / 1e6:,.0f} MB ({max(peak) / 1e6:,.0f}) |")


def token_hash(ids: torch.Tensor) -> str:
    """A short hash of a token tensor (to show that two runs saw the same windows)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:12]


def run_peer(a: argparse.Namespace, label: str, model: torch.nn.Module, tok, calib: torch.Tensor) -> dict:
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
    return result


def print_table(rows: list[dict], forward_s: float | None, forward_cpu: float | None, a: argparse.Namespace) -> None:
    """The results as a Markdown table (CPU seconds are the process's, robust to other load on the machine)."""
    fwd = "not timed" if forward_cpu is None else f"{forward_s:.1f} s wall, {forward_cpu:.1f} s CPU"
    print(f"\nSmolLM2-135M fp32, {a.sparsity:.0%} (2:4 runs 50%): calibration {a.nsamples}×{a.seqlen}, perplexity over {a.eval_windows}×{a.seqlen} "
          f"held-out tokens of Python's docs, {a.threads} thread(s); one plain forward over the calibration "
          f"tokens {fwd}\n")
    print("| run | seed | implementation | sparsity in scope | perplexity | pruning time (wall) | CPU time | "
          "CPU time / forward | peak RSS (added while pruning) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = "–" if r["seconds"] is None else f"{r['seconds']:.1f} s"
        c = "–" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f} s"
        ratio = "–" if r["cpu_seconds"] is None or forward_cpu is None else f"{r['cpu_seconds'] / forward_cpu:.2f}×"
        peak = "–" if r["peak_rss"] is None else \
            f"{r['peak_rss'] / 1e9:.2f} GB (+{(r['peak_rss'] - (r['start_rss'] or r['peak_rss'])) / 1e9:.2f})"
        seed = "–" if r.get("seed") is None else r["seed"]
        print(f"| {r['run']} | {seed} | {r['impl']} | {r['sparsity']:.2%} | {r['perplexity']:.3f} | {t} | {c} | {ratio} | "
              f"{peak} |")


if __name__ == "__main__":
    raise SystemExit(main())
