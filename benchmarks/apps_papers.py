"""The claims the apps_*.py benchmarks (and darex_smollm2.py, darex_adamr.py, loraprune_smollm2.py) test, read from
their committed JSON (benchmarks/results/apps_*.json, darex_smollm2.json, darex_adamr.json, loraprune_smollm2.json)
for the
results store's papers group (through benchmarks/papers_store.py), nothing re-run.

Each apps benchmark writes one JSON document: ``benchmark``, ``model``, ``settings`` (the budget) and ``runs`` (one
per configuration and seed: ``label``, ``seed``, ``figures``). Here each app names its paper, the claim it tests and
the comparison (prunekit.bench.papers.compare: paired over seeds, held above twice the standard error).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from prunekit.bench.papers import Measured, PaperResult, check_results, compare

MODEL = "apps (see each benchmark's model)"
# the benchmarks whose results come from another script's option (the rest: benchmarks/<name>.py)
SCRIPTS = {"apps_federated_select": "benchmarks/apps_federated.py --select … --name apps_federated_select",
           "apps_federated_adjust": "benchmarks/apps_federated.py --adjust … --name apps_federated_adjust",
           "darex_adamr_q": "benchmarks/darex_adamr.py --darex-q",
           "apps_superres_cubic": "benchmarks/apps_superres.py --arms 'IHT cubic' 'ISS-P cubic' --name apps_superres_cubic",
           "loraprune_smollm2_heads": "benchmarks/loraprune_smollm2.py --what heads"}


def read_payload(path: Path, name: str) -> dict[str, Any]:
    """The JSON document ``benchmarks/<name>.py`` wrote; one clear line for a file of another shape."""
    hint = f"pass the JSON file {SCRIPTS.get(name, f'benchmarks/{name}.py')} wrote (benchmarks/results/{name}.json); " \
           "nothing was stored"
    if not path.is_file():
        raise ValueError(f"{path}: no such results file; {hint}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not one JSON document (JSON lines?); {hint}") from None
    if not isinstance(d, dict) or d.get("benchmark") != name:
        got = d.get("benchmark") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path} holds the results of {got!r}, not of {name}; {hint}")
    runs = d.get("runs")
    if not isinstance(runs, list) or not runs or not all(
            isinstance(r, dict) and {"label", "seed", "figures"} <= set(r) for r in runs):
        raise ValueError(f"{path}: 'runs' is not a list of runs with label, seed and figures; {hint}")
    return d


def _scalars(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if v is None or isinstance(v, (bool, int, float, str))}


def _rows(d: dict, split: Callable[[str], tuple[str, str]] = lambda label: (label, "")) -> list[Measured]:
    return [Measured(*split(r["label"]), r["seed"], _scalars(r["figures"])) for r in d["runs"]]


def _result(paper, claim, verdict_why, metrics, rows, d, test="", percent=()):
    verdict, why = verdict_why
    return PaperResult(paper, claim, verdict, why, metrics, rows, d.get("settings", {}), test, percent)


def robustness(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    arms = ["magnitude 0.90", "SNIP 0.90", "structured channels 0.50"]
    verdicts, whys = [], []
    for a in arms:  # "methods differ": any one ahead of another, by the paired rule
        v, why = compare(rows, "relative", a, [b for b in arms if b != a], percent=False)
        verdicts.append(v)
        whys.append(why.split("; ", 1)[1])
    verdict = "held" if any(v in ("held", "partly") for v in verdicts) else "not held"
    return [_result('"Understanding Robustness Lottery"', "pruning methods differ in the robustness of the pruned "
                    "model: corrupted / clean accuracy (noise, blur, contrast, 3 severities) of magnitude, SNIP and "
                    "channel pruning, each against the others",
                    (verdict, "paired over seeds, one method ahead of another above twice the standard error; "
                     + "; ".join(whys)), ("relative", "clean", "mean_corrupted"), rows, d,
                    percent=("clean", "mean_corrupted"))]


def federated(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    for r in rows:
        r.figures["bytes_saved"] = 1.0 - r.figures["bytes"] / r.figures["dense_bytes"]
    paper = "Distributed Pruning Towards Tiny Neural Networks in Federated Learning"
    pruned = ["pruned 0.80", "pruned 0.95"]
    acc = [compare(rows, "accuracy", a, ["dense FedAvg"], margin=-0.01) for a in pruned]
    com = [compare(rows, "bytes_saved", a, ["dense FedAvg"], percent=False) for a in pruned]
    return [_result(paper, "federated pruning keeps the dense model's accuracy (loses less than 1 point) on non-IID "
                    "clients", _joined(acc), ("accuracy", "bytes"), rows, d, "accuracy", ("accuracy",)),
            _result(paper, "federated pruning sends fewer bytes than dense FedAvg", _joined(com),
                    ("bytes_saved", "bytes"), rows, d, "communication", ("bytes_saved",))]


def federated_select(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    s = d["settings"]["sparsity"][0]
    return [_result("Distributed Pruning Towards Tiny Neural Networks in Federated Learning",
                    f"FedTiny's adaptive batch-norm selection (the clients judge candidate allocations with batch-norm "
                    f"statistics recomputed on their own non-IID data) beats the fixed global allocation at sparsity {s}",
                    compare(rows, "accuracy", f"pruned {s:.2f} + adaptive BN selection", [f"pruned {s:.2f}"]),
                    ("accuracy", "bytes"), rows, d, "adaptive BN selection", ("accuracy",))]


def federated_adjust(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    s = d["settings"]["sparsity"][0]
    paper = "Distributed Pruning Towards Tiny Neural Networks in Federated Learning"
    fixed = f"pruned {s:.2f}"
    out = [_result(paper, f"FedTiny's progressive pruning (one layer a round, grown by the clients' top-k gradients of "
                   f"its pruned weights) beats the server's fixed magnitude mask at sparsity {s}",
                   compare(rows, "accuracy", f"{fixed} + progressive pruning", [fixed]), ("accuracy", "bytes"), rows,
                   d, "progressive pruning", ("accuracy",))]
    both = f"{fixed} + FedTiny (selection + progressive)"
    if any(r.arm == both for r in rows):
        out.append(_result(paper, f"FedTiny (adaptive batch-norm selection and progressive pruning) beats the fixed "
                           f"global magnitude mask at sparsity {s}", compare(rows, "accuracy", both, [fixed]),
                           ("accuracy", "bytes"), rows, d, "both modules", ("accuracy",)))
    return out


def _joined(results: list[tuple[str, str]]) -> tuple[str, str]:
    """Several comparisons' verdicts as one (combined) and their sentences after one statement of the rule."""
    from prunekit.bench.papers import combine

    rule = results[0][1].split("; ", 1)[0]
    return combine(v for v, _ in results), "; ".join([rule] + [w.split("; ", 1)[1] for _, w in results])


def _keep(label: str) -> tuple[str, str]:
    m = re.fullmatch(r"(.*) keep ([0-9.]+)", label)
    return (m.group(1), f"keep {m.group(2)}") if m else (label, "")


def _spread_unsplit(rows: list[Measured]) -> list[Measured]:
    """Rows without a setting (baselines) repeated under every setting, as the table's columns."""
    settings = sorted({r.setting for r in rows if r.setting})
    return [Measured(r.arm, s, r.seed, r.figures) for r in rows for s in (settings if not r.setting else [r.setting])]


def transfer(d: dict) -> list[PaperResult]:
    rows = _spread_unsplit(_rows(d, _keep))
    return [_result("Selectivity Drives Productivity: Efficient Dataset Pruning for Enhanced Transfer Learning",
                    "pruning the source classes by label mapping (LM) keeps transfer accuracy better than random source "
                    "classes at equal kept data", compare(rows, "accuracy", "LM", ["random"]), ("accuracy",), rows, d,
                    percent=("accuracy",))]


def windows(d: dict) -> list[PaperResult]:
    rows = []
    for r in d["runs"]:
        f = r["figures"]
        for arm, key, macs in (("blurred input", "psnr_blurred", None), ("restorer, every window", "psnr_full",
                                f["macs_full"]), ("restorer, blurry windows only", "psnr_pruned", f["macs_pruned"])):
            rows.append(Measured(arm, "", r["seed"], {"psnr": f[key], "macs": macs}))
    gain, why_gain = compare(rows, "psnr", "restorer, every window", ["blurred input"], percent=False)
    kept = compare(rows, "psnr", "restorer, blurry windows only", ["restorer, every window"], margin=-0.1, percent=False)
    if gain != "held":  # nothing restored: no quality to keep or lose
        verdict = ("not tested", "the restorer does not beat its blurred input (" + why_gain.split("; ", 1)[1]
                   + "), so keeping its quality says nothing; " + kept[1].split("; ", 1)[1])
    else:
        verdict = kept
    return [_result("Adaptive Window Pruning for Efficient Local Motion Deblurring",
                    "computing only the blurry windows cuts MACs and keeps the restorer's PSNR (loses less than 0.1 dB)",
                    verdict, ("psnr", "macs"), rows, d)]


def superres(d: dict) -> list[PaperResult]:
    rows = _rows(d, _at)
    paper = "Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution"
    return [_result(paper, "ISS-P (the smallest weights shrunk, not zeroed, while a sparse network trains from scratch) "
                    "beats iterative hard thresholding at equal sparsity and training: higher PSNR",
                    compare(rows, "psnr", "ISS-P", ["IHT"], percent=False), ("psnr", "sparsity"), rows, d,
                    "against hard thresholding"),
            _result(paper, "ISS-P beats gradual magnitude pruning at equal sparsity and training: higher PSNR",
                    compare(rows, "psnr", "ISS-P", ["GMP"], percent=False), ("psnr", "sparsity"), rows, d,
                    "against gradual magnitude pruning")]


def superres_cubic(d: dict) -> list[PaperResult]:
    rows = _rows(d, _at)
    return [_result("Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution",
                    "on gradual magnitude pruning's cubic schedule too, shrinking the smallest weights beats zeroing "
                    "them (iterative hard thresholding) at equal sparsity and training: higher PSNR",
                    compare(rows, "psnr", "ISS-P cubic", ["IHT cubic"], percent=False), ("psnr", "sparsity"), rows, d,
                    "on the cubic schedule")]


def distilled(d: dict) -> list[PaperResult]:
    rows = _rows(d, _keep)
    paper = "Rethinking Large-scale Dataset Compression: Shifting Focus From Labels to Images"
    return [_result(paper, "with the same soft-label teacher, random real images match pruned ones (lose less than "
                    "1 point to the easiest images)", compare(rows, "accuracy", "random soft", ["easiest soft"],
                                                              margin=-0.01), ("accuracy",), rows, d,
                    "random vs pruned images", ("accuracy",)),
            _result(paper, "PCA's combine step (pruned images merged) beats random images, hard labels",
                    compare(rows, "accuracy", "PCA easiest+combine hard", ["random hard"]), ("accuracy",), rows, d,
                    "combining images", ("accuracy",))]


def detection(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    paper = "Group channel pruning and spatial attention distilling for object detection"
    return [_result(paper, "group channel pruning (50 % of the channels, about -71 % MACs) with fine-tuning keeps the "
                    "detector's mAP@0.5 (loses less than 1 point)",
                    compare(rows, "map50", "pruned + fine-tuning", ["dense"], margin=-0.01), ("map50", "macs"), rows, d,
                    "pruning", ("map50",)),
            _result(paper, "spatial attention distillation adds to fine-tuning after the cut",
                    compare(rows, "map50", "pruned + fine-tuning + attention distillation", ["pruned + fine-tuning"]),
                    ("map50", "macs"), rows, d, "attention distillation", ("map50",))]


def emo(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    return [_result("An EMO Joint Pruning with Multiple Sub-networks",
                    "evolutionary multi-objective search over per-layer sparsities finds a better error / density front "
                    "(hypervolume) than one global or uniform allocation swept over sparsities",
                    compare(rows, "hypervolume", "EMO", ["global", "uniform"], percent=False), ("hypervolume",), rows,
                    d)]


def _at(label: str) -> tuple[str, str]:
    arm, _, setting = label.partition(" @ ")
    return arm, setting


def darex(d: dict) -> list[PaperResult]:
    rows = _rows(d, _at)
    extreme = [s for s in dict.fromkeys(r.setting for r in rows) if float(s.rsplit("=", 1)[1]) <= 0.02]
    return [_result("DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models",
                    "at extreme drop rates (density 0.02 and 0.01) DAREx-q's rescaling (q searched on unlabelled "
                    "calibration text) beats DARE's 1/density: lower perplexity of the pruned fine-tune on its own "
                    "held-out text", compare(rows, "neg_log_ppl", "DAREx-q", ["DARE"], extreme, percent=False),
                    ("ppl", "neg_log_ppl", "q"), rows, d)]


def darex_adamr(d: dict) -> list[PaperResult]:
    rows = _rows(d, _at)
    arms = [a for a in dict.fromkeys(r.arm for r in rows) if a != "AdamW"]
    results = compare(rows, "neg_drop_cost", arms[0], ["AdamW"], percent=False)
    return [_result("DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models",
                    f"fine-tuning with AdamR-L2 ({arms[0]}) instead of AdamW makes DARE's drop of the deltas cheaper "
                    "(DARE-pruned minus fine-tuned perplexity on held-out text), at every density tried",
                    results, ("neg_drop_cost", "drop_cost", "ppl", "finetuned"), rows, d, "DAREx-L2 (AdamR)")]


def darex_adamr_q(d: dict) -> list[PaperResult]:
    rows = _rows(d, _at)
    paper = "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models"
    adamr = next(a for a in dict.fromkeys(r.arm for r in rows) if a.startswith("AdamR") and "DAREx-q" not in a)
    return [_result(paper, "DAREx-q's rescale (1/q, q searched on calibration text) makes DARE's drop of an AdamW "
                    "fine-tune's large deltas cheaper than DARE's 1/density, at every density tried",
                    compare(rows, "neg_drop_cost", "AdamW + DAREx-q", ["AdamW"], percent=False),
                    ("neg_drop_cost", "drop_cost", "ppl", "finetuned"), rows, d, "DAREx-q on AdamW's deltas"),
            _result(paper, f"DAREx-q's rescale also makes the drop of {adamr}'s small deltas cheaper (both repairs "
                    "together)", compare(rows, "neg_drop_cost", f"{adamr} + DAREx-q", [adamr], percent=False),
                    ("neg_drop_cost", "drop_cost", "ppl", "finetuned"), rows, d, "DAREx-q on AdamR's deltas")]


def loraprune(d: dict) -> list[PaperResult]:
    rows = _rows(d)
    paper = "LoRAPrune: Pruning Meets Low-Rank Parameter-Efficient Fine-Tuning"
    lora, grad, oneshot = "LoRAPrune (LoRA-guided)", "LoRAPrune (true gradients)", "one-shot activations + LoRA"
    units = ("attention heads (whole key/value groups)" if d.get("settings", {}).get("what") == "heads"
             else "MLP neurons")
    return [_result(paper, f"removing {units} during LoRA fine-tuning by the LoRA-guided criterion beats one-shot "
                    "structured pruning (Minitron's activations) followed by the same LoRA fine-tune",
                    compare(rows, "neg_log_ppl", lora, [oneshot], percent=False), ("ppl", "neg_log_ppl", "peak_rss_mb"),
                    rows, d, "against one-shot pruning"),
            _result(paper, "the LoRA-guided criterion is as good as the weights' true gradients (perplexity at most 5 % "
                    "higher)", compare(rows, "neg_log_ppl", lora, [grad], margin=-0.05, percent=False),
                    ("ppl", "neg_log_ppl", "peak_rss_mb"), rows, d, "against the true gradients"),
            _result(paper, "the LoRA-guided criterion needs less memory than the weights' true gradients",
                    compare(rows, "neg_peak_rss_mb", lora, [grad], percent=False), ("peak_rss_mb", "ppl"), rows, d,
                    "memory")]


CLAIMS = {"apps_robustness": robustness, "apps_federated": federated, "apps_federated_select": federated_select,
          "apps_federated_adjust": federated_adjust,
          "apps_transfer": transfer,
          "apps_windows": windows, "apps_superres": superres, "apps_superres_cubic": superres_cubic,
          "apps_distilled": distilled, "apps_detection": detection, "apps_emo": emo,
          "darex_smollm2": darex, "darex_adamr": darex_adamr,
          "darex_adamr_q": darex_adamr_q, "loraprune_smollm2": loraprune,
          "loraprune_smollm2_heads": loraprune}


def load(name: str, path: Path) -> tuple[str, list[PaperResult]]:
    """The model and the tested claims of ``path`` (the JSON benchmarks/<name>.py wrote), checked."""
    d = read_payload(Path(path), name)
    try:
        results = CLAIMS[name](d)
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"{path}: the runs of benchmarks/{name}.py could not be read ({type(exc).__name__}: {exc}); "
                         "pass the file it wrote; nothing was stored") from None
    check_results(results)
    return d.get("model") or MODEL, results
