"""The training-time benchmark over several seeds: per method and sparsity, accuracy mean ± sd, and each paper's
claim decided by the one rule of the papers benchmarks (per sparsity, the paired difference over seeds, method −
baseline on the same seed, held when its mean is above twice its standard error; a claim over both sparsities is
held when both comparisons are, not held when neither is, partly otherwise).

    for s in 0 1 2; do python benchmarks/training_time.py --train-limit 60000 --epochs 5 --finetune-epochs 5 \\
        --threads 1 --seed $s --json runs/tt/s$s.json --plot runs/tt/s$s.png; done
    python benchmarks/training_time_seeds.py runs/tt/s0.json runs/tt/s1.json runs/tt/s2.json \\
        --out benchmarks/results/training_time_seeds.json

Files of different settings (other than the seed) are refused with one line, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from prunekit.bench.papers import combine, paired_verdict

ONE_SHOT = "one-shot + fine-tune"
# claim: (docs/papers.md row, method, baseline, margin, what it says). A negative margin tolerates a loss that small.
CLAIMS = {
    "rewinding finds winning tickets (rows 3, 15)": ("IMP rewind (3 rounds)", "IMP mask, random re-init", 0.0),
    "GraNet beats one-shot + fine-tune (row 21)": ("GraNet", ONE_SHOT, 0.0),
    "gradual beats one-shot + fine-tune (row 25)": ("gradual", ONE_SHOT, 0.0),
    "random ERK is within 1 point of one-shot + fine-tune (row 40)": ("random ERK (static)", ONE_SHOT, -0.01),
    "a soup of 3 beats one fine-tuned model (row 58)": ("soup of 3", ONE_SHOT, 0.0),
    "a soup of 3 beats its best ingredient (row 58)": ("soup of 3", "best ingredient", 0.0),
}


def load(paths: list[Path]) -> tuple[dict, list[dict]]:
    """The runs' shared settings and every row with its seed; exits with one line when the settings differ."""
    settings, rows = None, []
    for path in paths:
        run = json.loads(path.read_text())
        own = {k: v for k, v in run["settings"].items() if k not in ("seed", "json", "table", "plot", "quiet")}
        if settings is not None and own != settings:
            diff = sorted(k for k in own if own.get(k) != settings.get(k))
            sys.exit(f"training_time_seeds: {path} was run with other settings ({', '.join(diff)}); merge runs of "
                     "one budget only")
        settings = own
        seed = run["settings"]["seed"]
        for r in run["rows"]:
            rows.append({**r, "seed": seed})
            if "ingredients" in r:
                rows.append({"method": "best ingredient", "sparsity": r["sparsity"], "seed": seed,
                             "accuracy": max(r["ingredients"])})
    return settings or {}, rows


def accuracy_of(rows: list[dict], method: str, sparsity: float) -> dict[int, float]:
    return {r["seed"]: r["accuracy"] for r in rows if r["method"] == method and r["sparsity"] == sparsity}


def verdicts(rows: list[dict]) -> dict[str, dict]:
    """Per claim: its verdict and, per sparsity, the paired differences (in accuracy points) and their verdict."""
    sparsities = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    out = {}
    for claim, (method, base, margin) in CLAIMS.items():
        per = {}
        for s in sparsities:
            a, b = accuracy_of(rows, method, s), accuracy_of(rows, base, s)
            seeds = sorted(set(a) & set(b))
            diffs = [a[k] - b[k] for k in seeds]
            if not diffs:
                continue
            per[f"{s:.0%}"] = {"diffs": [round(100 * d, 2) for d in diffs], "seeds": seeds,
                               "verdict": paired_verdict(diffs, margin)}
        out[claim] = {"verdict": combine(v["verdict"] for v in per.values()), "by_sparsity": per,
                      "method": method, "baseline": base, "margin_points": 100 * margin}
    return out


def table(rows: list[dict]) -> str:
    """Accuracy mean ± sd over seeds, per method and sparsity."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    sparsities = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    head = "| method | " + " | ".join(f"acc @ {s:.0%}" for s in sparsities) + " |"
    lines = [head, "|---|" + "---|" * len(sparsities)]
    dense = [r["accuracy"] for r in rows if r["method"] == "dense"]
    lines.append(f"| dense (the starting point) | {_ms(dense)} |" + " – |" * (len(sparsities) - 1))
    for m in methods:
        cells = [_ms(list(accuracy_of(rows, m, s).values())) for s in sparsities]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="training_time.py --json files, one per seed")
    p.add_argument("--out", type=Path, default=None, help="write the merged rows, table and verdicts here (JSON)")
    a = p.parse_args(argv)
    missing = [str(x) for x in a.runs if not x.is_file()]
    if missing:
        sys.exit(f"training_time_seeds: no such file: {', '.join(missing)}")
    settings, rows = load(a.runs)
    v = verdicts(rows)
    print(table(rows))
    for claim, r in v.items():
        parts = "; ".join(f"{s}: {d['diffs']} points → {d['verdict']}" for s, d in r["by_sparsity"].items())
        print(f"- {claim}: **{r['verdict']}** ({parts})")
    if a.out:
        a.out.write_text(json.dumps({"settings": settings, "seeds": sorted({r["seed"] for r in rows}),
                                     "rows": rows, "table": table(rows), "verdicts": v}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
