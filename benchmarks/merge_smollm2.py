"""Merging two real fine-tunes of SmolLM2-135M-Instruct: DARE, DARE+TIES, TIES, DELLA and magnitude
pruning of the deltas at densities 0.5/0.2/0.1/0.05, beside each fine-tuned model, simple averaging
and task arithmetic, with perplexity on held-out text of each fine-tune's source.

The two sources are the two halves of Python's documentation by file: A = the library reference
(``library/``), B = everything else (tutorial, how-tos, language reference, C API, what's new, FAQ).
Each fine-tune trains every weight but the (tied) embeddings with AdamW on windows of its own source's
calibration split; perplexity uses the evaluation split (disjoint files). Every merge runs as a
``prunekit merge`` subprocess, so its time and peak resident memory are its own.

    nice -n 10 python benchmarks/merge_smollm2.py                   # the README's table
    python benchmarks/merge_smollm2.py --steps 4 --eval-windows 2 --densities 0.1 --methods ties   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunekit.datasets.text import Document, documents, split_documents
from prunekit.metrics.perplexity import perplexity

METHODS = ["dare_linear", "dare_ties", "ties", "della", "magnitude"]
RANDOM = {"dare_linear", "dare_ties", "della", "della_linear"}


def sources() -> dict[str, list[Document]]:
    docs = documents("pydocs")
    return {"A": [d for d in docs if d.name.startswith("library/")],
            "B": [d for d in docs if not d.name.startswith("library/")]}


def windows(tokenizer, docs: list[Document], n: int, seqlen: int, seed: int | None) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens from ``docs`` (shuffled by ``seed``, or in order when None)."""
    order = list(range(len(docs)))
    if seed is not None:
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    ids: list[int] = []
    for i in order:
        ids.extend(tokenizer(docs[i].text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= n * seqlen:
            break
    if len(ids) < n * seqlen:
        raise SystemExit(f"not enough text for {n} × {seqlen} tokens")
    return torch.tensor(ids[: n * seqlen]).reshape(n, seqlen)


def finetune(base: Path, out: Path, train: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
             optimizer=None, warmup: int = 0) -> dict:
    """``steps`` full fine-tuning steps of the base (embeddings frozen) on ``train``'s windows, saved to ``out``;
    ``optimizer(params, lr)`` builds the optimizer (default AdamW without weight decay); the learning rate rises
    linearly over the first ``warmup`` steps, then stays."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_("embed" not in name)  # the tied embeddings (and so the LM head) stay as they are
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (optimizer(params, lr) if optimizer is not None else
           torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False))  # no stacked temporaries: less memory
    t0, c0 = time.perf_counter(), time.process_time()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        idx = torch.arange(step * batch, (step + 1) * batch) % train.shape[0]
        x = train[idx]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(str(out))
    info = {"steps": steps, "batch": batch, "seqlen": train.shape[1], "lr": lr, **({"warmup": warmup} if warmup else {}),
            "first_loss": losses[0],
            "last_loss": sum(losses[-5:]) / len(losses[-5:]), "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "trainable": sum(p.numel() for p in params)}
    (out / "finetune.json").write_text(json.dumps(info, indent=2))
    return info


def evaluate(folder: Path, evals: dict[str, torch.Tensor]) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return {k: perplexity(model, w, batch_size=4, progress=False) for k, w in evals.items()}


def run_merge(work: Path, method: str, density: float | None, seed: int, extra: list[str]) -> tuple[Path, dict]:
    out = work / "merged"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-c", "import sys; from prunekit.cli import main; sys.exit(main(sys.argv[1:]))", "merge", "--base", str(work / "base"),
           "--models", str(work / "ft-A"), str(work / "ft-B"), "--method", method, "--seed", str(seed),
           "--out", str(out), "--json", *extra]
    if density is not None:
        cmd += ["--density", str(density)]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"merge failed: {' '.join(cmd)}\n{res.stderr}")
    report = json.loads(res.stdout)
    report["wall_s"] = time.perf_counter() - t0
    report["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, report


NAIVE = """
import sys, torch
from safetensors.torch import load_file
from prunekit.merge import merge_state_dicts
base, a, b = (load_file(f"{sys.argv[1]}/{n}/model.safetensors") for n in ("base", "ft-A", "ft-B"))
out = merge_state_dicts(base, [a, b], sys.argv[2], **({"density": 0.1} if sys.argv[2] != "linear" else {}))
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def memory(work: Path, methods: list[str]) -> None:
    """Peak resident memory of the streamed merge (prunekit merge) beside the same merge done in memory
    (the three state dicts loaded whole, merge_state_dicts), each in its own process."""
    print("| method | streamed peak RSS MB | in-memory peak RSS MB | streamed wall s | streamed CPU s |")
    print("|---|---:|---:|---:|---:|")
    for method in methods:
        _, rep = run_merge(work, method, None if method == "linear" else 0.1, 0, [])
        res = subprocess.run([sys.executable, "-c", NAIVE, str(work), method], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        naive = int(res.stdout.strip().splitlines()[-1]) / 1024
        print(f"| {method} | {rep['peak_rss_mb']:,.0f} | {naive:,.0f} | {rep['wall_s']:.1f} | {rep['cpu_s']:.1f} |",
              flush=True)
    shutil.rmtree(work / "merged", ignore_errors=True)


def prepare(work: Path, steps: int = 40, batch: int = 4, seqlen: int = 128, lr: float = 1e-4):
    """The base (``work/base``) and the two fine-tunes (``work/ft-A``, ``work/ft-B``), made once and remade only
    when their settings change; returns the base's tokenizer."""
    from transformers import AutoTokenizer

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "base" / "model.safetensors").is_file():
        from prunekit.models.hf import load_model

        lm = load_model("smollm2-135m")
        lm.model.save_pretrained(str(work / "base"))
        lm.tokenizer.save_pretrained(str(work / "base"))
        del lm
    tok = AutoTokenizer.from_pretrained(str(work / "base"))
    settings = {"steps": steps, "batch": batch, "seqlen": seqlen, "lr": lr}
    for k, d in sources().items():
        ft = work / f"ft-{k}"
        done = ft / "finetune.json"
        if done.is_file() and all(json.loads(done.read_text()).get(s) == v for s, v in settings.items()):
            continue
        if ft.exists():
            shutil.rmtree(ft)
        train = windows(tok, split_documents(d, "calibration"), steps * batch, seqlen, seed=0)
        info = finetune(work / "base", ft, train, steps, batch, lr, seed=0)
        tok.save_pretrained(str(ft))
        print(f"fine-tuned on {k}: loss {info['first_loss']:.3f} → {info['last_loss']:.3f}, "
              f"{info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} s CPU", flush=True)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/prunekit-bench-merge", help="cache of the base and the fine-tunes")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.05])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="merge seeds of the random methods")
    ap.add_argument("--seed-densities", type=float, nargs="+", default=[0.1],
                    help="densities at which the random methods run every seed (elsewhere seed 0 only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--memory", action="store_true",
                    help="only compare the streamed merge's peak memory with an in-memory merge (needs the fine-tunes)")
    args = ap.parse_args()
    if args.memory:
        memory(Path(args.work), ["linear", "dare_ties", "ties", "della"])
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    tok = prepare(work, args.steps, args.batch, args.seqlen, args.lr)
    src = sources()
    evals = {k: windows(tok, split_documents(d, "evaluation"), args.eval_windows, args.eval_seqlen, None)
             for k, d in src.items()}

    rows: list[dict] = []

    def add(label: str, folder: Path, report: dict | None = None, **extra) -> None:
        ppl = evaluate(folder, evals)
        row = {"label": label, "ppl_A": ppl["A"], "ppl_B": ppl["B"], **extra}
        if report:
            row.update(merge_wall_s=report["wall_s"], merge_cpu_s=report["cpu_s"], peak_rss_mb=report["peak_rss_mb"],
                       kept=[d["kept"] for d in report["deltas"]])
        rows.append(row)
        print(f"{label:<34} A {ppl['A']:7.3f}  B {ppl['B']:7.3f}" +
              (f"   merge {report['wall_s']:5.1f} s, peak RSS {report['peak_rss_mb']:,.0f} MB" if report else ""),
              flush=True)

    add("base (SmolLM2-135M-Instruct)", work / "base")
    add("fine-tuned on A (library/)", work / "ft-A")
    add("fine-tuned on B (the rest)", work / "ft-B")
    out, rep = run_merge(work, "linear", None, 0, [])
    deltas = rep["deltas"]
    add("simple average", out, rep)
    out, rep = run_merge(work, "task_arithmetic", None, 0, [])
    add("task arithmetic (sum of deltas)", out, rep)
    for method in args.methods:
        for density in args.densities:
            seeds = args.seeds if method in RANDOM and density in args.seed_densities else args.seeds[:1]
            for seed in seeds:
                out, rep = run_merge(work, method, density, seed, [])
                add(f"{method} d={density:g}" + (f" seed {seed}" if method in RANDOM else ""), out, rep,
                    method=method, density=density, seed=seed)
    for method in ("dare_ties", "ties"):
        if method in args.methods and 0.1 in args.densities:
            out, rep = run_merge(work, method, 0.1, 0, ["--semantics", "mergekit"])
            add(f"{method} d=0.1 (mergekit semantics)", out, rep, method=method, density=0.1, semantics="mergekit")
    shutil.rmtree(work / "merged", ignore_errors=True)

    print("\ndeltas:", json.dumps([{k: d[k] for k in ("model", "mean_abs", "median_abs", "max_abs", "relative_norm",
                                                       "large_share")} for d in deltas], indent=1))
    ft_info = {k: json.loads((work / f"ft-{k}" / "finetune.json").read_text()) for k in src}
    print("fine-tunes:", json.dumps(ft_info, indent=1))
    print(f"\n| model | ppl A (library/) | ppl B (rest) | geo. mean | merge wall s | peak RSS MB |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        geo = math.sqrt(r["ppl_A"] * r["ppl_B"])
        merge_s = f"{r['merge_wall_s']:.1f}" if "merge_wall_s" in r else ""
        rss = f"{r['peak_rss_mb']:,.0f}" if "peak_rss_mb" in r else ""
        print(f"| {r['label']} | {r['ppl_A']:.3f} | {r['ppl_B']:.3f} | {geo:.3f} | {merge_s} | {rss} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "deltas": deltas, "finetunes": ft_info,
                                               "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
