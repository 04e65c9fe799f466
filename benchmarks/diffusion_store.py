"""The diffusion benchmarks' results in prunekit's results store, so ``prunekit report`` shows them with their
PNG image grids.

Each benchmark writes its JSON (and grids) under benchmarks/results/; this reads them back and stores one run per
(model, seed) through ``prunekit.bench.diffusion.store_diffusion_runs`` — the numbers exactly as measured, nothing
re-run. ``diffusion_memorization.py --db``, ``diffusion_ecodiff.py --db`` and ``diffusion_aptp.py --db`` call it
on the file they just wrote.

    python benchmarks/diffusion_store.py --db prunekit-results.db            # every result file present
    prunekit report --db prunekit-results.db --out diffusion.html
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from prunekit.bench.diffusion import DiffusionRun, store_diffusion_runs

RESULTS = Path(__file__).resolve().parent / "results"
FILES = {"prune": RESULTS / "diffusion" / "diffusion_prune.json",
         "prune-long": RESULTS / "diffusion" / "diffusion_prune_ft600.json", "ecodiff": RESULTS / "diffusion_ecodiff.json",
         "aptp": RESULTS / "diffusion_aptp.json", "memorization": RESULTS / "diffusion_memorization_fid5k.json",
         "sparsity-sweep": RESULTS / "diffusion" / "diffusion_sparsity_sweep.json",
         "insights": RESULTS / "diffusion" / "diffusion_prune_insights5k.json"}


def _scalars(d: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in drop and (v is None or isinstance(v, (bool, int, float, str)))}


def _grid(base: Path, rel: str | None, caption: str) -> dict[str, bytes]:
    if not rel or not (base / rel).is_file():
        return {}
    return {caption: (base / rel).read_bytes()}


def _split_seed(variant: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.*) seed (\d+)", variant)
    return (m.group(1), int(m.group(2))) if m else (variant, None)


def _finetuned_grid(base: Path, row: dict) -> str | None:
    """The PNG grid of a fine-tuned Diff-Pruning model, where the benchmark saved one for its seed."""
    if row["importance"] != "diff-pruning":
        return None
    for name in (f"diff_pruning_ft{row['finetune']['steps']}_s{row['seed']}.png",):
        if (base / name).is_file():
            return name
    return None


def prune_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_prune.py: the base and each importance at its MAC target (Diff-Pruning also after its fine-tune)."""
    d = json.loads(path.read_text())
    base = path.parent
    runs = [DiffusionRun("dense", int(seed), {"params": d["base"]["params"], "macs_per_step": d["base"]["macs_per_step"],
                                              **_scalars(q, ("note", "seed"))}, _grid(base, "base.png", "dense"))
            for seed, q in d["base"]["quality"].items()]
    for r in d["runs"]:
        removed = r["prune"]["macs_removed"]
        cost = {"params": r["params"], "macs_per_step": r["macs_per_step"], "macs_removed": removed}
        if "quality" in r:  # measured before the fine-tune too (diffusion_prune.py without --skip-before)
            runs.append(DiffusionRun(f"{r['importance']}, -{removed:.1%} MACs, no fine-tune", r["seed"],
                                     {**cost, **_scalars(r["quality"], ("note", "seed"))}))
        if "quality_finetuned" in r:
            label = f"{r['importance']}, -{removed:.1%} MACs, + {r['finetune']['steps']} fine-tune steps"
            runs.append(DiffusionRun(label, r["seed"], {**cost, **_scalars(r["quality_finetuned"], ("note", "seed")),
                                                        "finetune_seconds_fraction": r["finetune_cost"]["seconds_fraction"],
                                                        "finetune_images_fraction": r["finetune_cost"]["images_fraction"]},
                                     _grid(base, _finetuned_grid(base, r), label)))
    protocol = {"weights_sha256": d["weights_sha256"], "samples": d["n"], "ddim_steps": d["ddim_steps"],
                "classifier_test_accuracy": d["classifier"]["test_accuracy"], "floors": d["floors"]}
    return d["model"], protocol, runs


def _rows(path: Path, drop: tuple[str, ...]) -> list[DiffusionRun]:
    d = json.loads(path.read_text())
    runs = []
    for r in d["rows"]:
        label, seed = _split_seed(r["variant"])
        runs.append(DiffusionRun(label, seed if seed is not None else r.get("seed"),
                                 _scalars(r, ("variant", "seed", "grid", *drop)),
                                 _grid(path.parent, r.get("grid"), r["variant"])))
    return runs


def ecodiff_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_ecodiff.py: unpruned, magnitude units, random units, EcoDiff per seed."""
    d = json.loads(path.read_text())
    protocol = {"classifier_test_accuracy": d["classifier_test_accuracy"], "fid_noise_floor": d["fid_noise_floor"],
                "samples": d["samples"], "ddim_steps": d["eval_ddim_steps"],
                "args": {k: v for k, v in d["args"].items() if k != "out"}}
    return d["base"], protocol, _rows(path, ())


def aptp_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_aptp.py: unpruned, APTP routed and the static one-code model per seed."""
    d = json.loads(path.read_text())
    protocol = {"classifier_test_accuracy": d["classifier_test_accuracy"],
                "fid_noise_floor": d["fid_noise_floor"]["overall"], "per_class_samples": d["per_class_samples"],
                "ddim_steps": d["eval_ddim_steps"], "args": {k: v for k, v in d["args"].items() if k != "out"}}
    return d["base"], protocol, _rows(path, ())


def memorization_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_memorization.py: the memorizing model, located units deleted, random units deleted, per seed."""
    d = json.loads(path.read_text())
    if not isinstance(d.get("memorizing_model"), dict):
        raise ValueError(f"{path} was written by an older diffusion_memorization.py (no model card); re-run it")
    runs = []
    for r in d["runs"]:
        for label, part, grid in (("trained on duplicates", "before", "before"),
                                  ("located units deleted", "after_forget", "forget"),
                                  ("random units deleted", "after_random_units", "random")):
            figures = _scalars(r[part])
            if part != "before":
                figures["units_deleted"] = r["forget" if part == "after_forget" else "random"]["removed"]
            runs.append(DiffusionRun(label, r["seed"], figures,
                                     _grid(path.parent, r["grids"][grid], f"{label}, seed {r['seed']}")))
    card = d["memorizing_model"]
    protocol = {"model_weights_sha256": card.get("weights_sha256"), "training_set": d["training_set"],
                "threshold_rule": d["threshold_rule"], "copy_threshold": d["copy_threshold"],
                "classifier_test_accuracy": d["classifier_test_accuracy"], "ddim_steps": d["args"]["steps"],
                "samples_per_class": d["samples_per_class"]}
    return f"memorizing DDPM {card['key']}", protocol, runs


def prune_long_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_prune.py --reuse-base (Diff-Pruning with a longer fine-tune): its pruned rows only (the unpruned
    model's figures were taken from diffusion_prune.json, whose rows hold them)."""
    model, protocol, runs = prune_runs(path)
    return model, protocol, [r for r in runs if r.label != "dense"]


def sweep_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_sparsity_sweep.py: the unpruned UNet and each (score, sparsity), per seed; no fine-tune."""
    d = json.loads(path.read_text())
    runs = [DiffusionRun("dense", int(seed), _scalars(q, ("note", "seed"))) for seed, q in d["dense"].items()]
    runs += [DiffusionRun(f"{r['method']} {r['sparsity']:.0%} unstructured", r["seed"],
                          {"sparsity": r["achieved"], **_scalars(r["quality"], ("note", "seed"))}) for r in d["runs"]]
    protocol = {"n": d["n"], "ddim_steps": d["ddim_steps"], "floors": d["floors"], "verdicts": d.get("verdicts"),
                "args": {k: v for k, v in d["args"].items() if k != "out"}}
    return f"DDPM {d['weights_sha256'][:12]}", protocol, runs


def insight_runs(path: Path) -> tuple[str, dict, list[DiffusionRun]]:
    """diffusion_prune.py --insights: each (part of the UNet, importance) at equal MACs, per seed; no fine-tune."""
    d = json.loads(path.read_text())
    if "insight_verdicts" not in d:
        raise ValueError(f"{path} holds no insight verdicts: merge its per-seed files with diffusion_prune.py --merge")
    runs = [DiffusionRun(f"{r['importance']} in {'+'.join(r['blocks'])}", r["seed"],
                         {"macs_removed": r["macs_removed"], **_scalars(r["quality"], ("note", "seed"))})
            for r in d["insights"] if "quality" in r]
    protocol = {"weights_sha256": d["weights_sha256"], "samples": d["n"], "ddim_steps": d["ddim_steps"],
                "floors": d["floors"], "verdicts": d["insight_verdicts"]}
    return f"DDPM {d['weights_sha256'][:12]}", protocol, runs


READERS = {"prune": prune_runs, "prune-long": prune_long_runs, "ecodiff": ecodiff_runs, "aptp": aptp_runs,
           "memorization": memorization_runs, "sparsity-sweep": sweep_runs, "insights": insight_runs}


def store(db: str, name: str, path: Path | None = None) -> int:
    """Store the runs of one benchmark's result file; returns how many."""
    model, protocol, runs = READERS[name](path or FILES[name])
    return store_diffusion_runs(db, f"diffusion_{name}", model, protocol, runs, threads=1)  # every one runs 1 thread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="the results store (created if missing)")
    ap.add_argument("--only", nargs="+", choices=sorted(READERS), default=None)
    args = ap.parse_args(argv)
    names = args.only or [n for n in READERS if FILES[n].is_file()]
    missing = [n for n in names if not FILES[n].is_file()]
    if missing:
        raise SystemExit(f"no result file for {missing}: run benchmarks/diffusion_{missing[0]}.py first")
    for name in names:
        try:
            print(f"{name}: stored {store(args.db, name)} runs from {FILES[name]} in {args.db}")
        except ValueError as exc:
            if args.only:
                raise
            print(f"{name}: skipped: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
