"""APTP prompt-routed pruning against one static pruned UNet at equal average MACs (the static model is APTP
with a single code, trained with the same objectives and budget): FID-FMNIST overall (against real test
images) and per class (against real training images of the class), precision / recall, each with its
noise floor, class accuracy of the samples, the paired difference to the unpruned model's samples, and
measured sampling time. No fine-tuning unless --finetune-steps (then the same total steps for both: the
routed code models split them by their share of the classes).

    nice -n 10 python benchmarks/diffusion_aptp.py                                # seeds 0 1 2
    python benchmarks/diffusion_aptp.py --seeds 0 --iterations 3 --per-class 4   # smoke

Writes benchmarks/results/diffusion_aptp.json. See _diffusion2_eval.py for the base model and FID-FMNIST.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _diffusion2_eval as ev  # noqa: E402

from prunekit.diffusion import TrainConfig, fashion_mnist, train_ddpm_  # noqa: E402
from prunekit.diffusion.aptp import APTPConfig, code_models, routed_sample, train_aptp  # noqa: E402
from prunekit.diffusion.ddpm import schedule_of  # noqa: E402
from prunekit.diffusion.ecodiff import ddim_from  # noqa: E402


def finetune(models: dict, class_codes: list[int], x, y, steps: int, seed: int) -> dict:
    """Fine-tune each code model on the classes routed to it; ``steps`` split by the codes' class shares."""
    if steps <= 0:
        return {}
    out = {}
    for c, m in models.items():
        cls = [k for k, v in enumerate(class_codes) if v == c]
        n = max(1, round(steps * len(cls) / len(class_codes)))
        sel = torch.isin(y, torch.tensor(cls))
        sched = schedule_of(m).model_dump()
        rep = train_ddpm_(m, x[sel], y[sel], TrainConfig(steps=n, batch_size=32, lr=2e-4, warmup_steps=10, seed=seed,
                                                         **sched), progress=False)
        out[c] = {"steps": n, "seconds": rep.seconds}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--macs", type=float, default=0.6, help="class-average fraction of MACs per step kept")
    ap.add_argument("--codes", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=10, help="samples per class")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps for evaluation samples")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion_aptp.json")
    ap.add_argument("--db", default=None, help="also store the runs (and grids) in this results store")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    base, base_desc = ev.base_model(args.model, args.train_steps)
    x, y = fashion_mnist("train", limit=10000)
    xt, yt = fashion_mnist("test")
    n = args.per_class * 10
    labels = torch.arange(n) % 10
    noise = torch.randn((n, 1, 32, 32), generator=torch.Generator().manual_seed(99))
    base_x = ddim_from(base, noise, labels, steps=args.steps)
    sampled, timed = [], {}
    for seed in args.seeds:  # train and sample first: no classifier needed yet
        for kind, k in (("APTP routed", args.codes), ("static (1 code)", 1)):
            cfg = APTPConfig(num_codes=k, macs=args.macs, iterations=args.iterations, batch_size=args.batch_size,
                             seed=seed)
            res = train_aptp(base, x, y, cfg)
            print(res, flush=True)
            models = code_models(base, res)
            ft = finetune(models, res.class_codes, x, y, args.finetune_steps, seed)
            t0 = time.perf_counter()
            xs = routed_sample(models, res.class_codes, labels, steps=args.steps, seed=99)  # the noise of base_x
            sampled.append((f"{kind} seed {seed}", xs, {
                "seed": seed, "codes": k, "average_macs": res.average_macs, "code_macs": res.code_macs,
                "class_codes": res.class_codes, "router_seconds": res.seconds, "sample_seconds": time.perf_counter() - t0,
                "finetune": ft, "final_losses": res.to_dict()["final_losses"]}))
            if seed == args.seeds[0]:
                timed[kind] = (models, res.class_codes)
    feats, classes, clf_desc, clf_acc = ev.classifier()
    test_feats = feats(xt)
    g = torch.Generator().manual_seed(1234)
    test_by_class = {c: test_feats[yt == c][torch.randperm(int((yt == c).sum()), generator=g)] for c in range(10)}
    real_all = torch.cat([test_by_class[c][:args.per_class] for c in range(10)])
    # per-class references: real *training* images of the class (the test set has 1,000 a class, too few for a
    # reference and a floor pair at 500 samples a class); the per-class floor pairs test halves of up to 500
    train_feats = feats(x)
    ref_by_class = {c: train_feats[y == c][torch.randperm(int((y == c).sum()), generator=g)][:args.per_class]
                    for c in range(10)}
    half = min(args.per_class, 500)
    real_floors = ev.floors(test_feats, n)
    floors = {"overall": real_floors["fid"],
              "precision_recall": {k: real_floors[k] for k in ("precision", "recall")},
              "per_class": {c: ev.fid(test_by_class[c][:half], test_by_class[c][half:2 * half]) for c in range(10)}}

    def evaluate(name, xs, extra):
        f = feats(xs)
        per = {c: ev.fid(f[labels == c], ref_by_class[c]) for c in range(10)}
        hit = classes(xs).eq(labels).float()
        row = {"variant": name, "fid": ev.fid(f, real_all), **ev.precision_recall(real_all, f), "fid_per_class": per,
               "class_accuracy": float(hit.mean()),
               "class_accuracy_per_class": {c: float(hit[labels == c].mean()) for c in range(10)},
               "paired_mse_to_base": float((xs - base_x).pow(2).mean()), **extra,
               "grid": ev.save_class_grid(xs, labels, args.out, name)}
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("fid_per_class", "class_accuracy_per_class")}), flush=True)
        return row

    rows = [evaluate("unpruned", base_x, {"average_macs": 1.0})]
    rows += [evaluate(name, xs, extra) for name, xs, extra in sampled]
    tb = torch.arange(10)
    nb = noise[:10]

    def sampler(models, codes):
        return lambda: routed_sample(models, codes, tb, steps=args.steps, seed=7)

    timing = ev.sampling_times({"unpruned": lambda: ddim_from(base, nb, tb, steps=args.steps),
                                **{k: sampler(*v) for k, v in timed.items()}})
    out = {"when": ev.stamp(), "base": base_desc, "classifier": clf_desc, "classifier_test_accuracy": clf_acc,
           "fid_noise_floor": floors, "per_class_samples": args.per_class, "eval_ddim_steps": args.steps,
           "args": vars(args) | {"model": str(args.model), "out": str(args.out)}, "rows": rows,
           "sampling_time_10_images_1_per_class": timing, "seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"noise floor {floors['overall']:.2f}; timing {timing['ratios']}; wrote {args.out}")
    if args.db:
        from diffusion_store import store

        print(f"stored {store(args.db, 'aptp', args.out)} runs in {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
