"""Memorization located and deleted: a DDPM trained on a small Fashion-MNIST subset in which a few classes
hold only ``--per-memorized`` images, each repeated ``--copies`` times; its samples of those classes copy
training images. The units those classes over-activate (z-score against the other classes, over the DDIM
trajectory) are located and deleted (no retraining), and the memorization rate is measured before and
after, beside FID-FMNIST, against deleting as many random units.

A sample is a copy when its nearest training image (classifier features) is closer than the 1% quantile of
the same distance for real test images (so 1% of real new images would be called copies).

    nice -n 10 python benchmarks/diffusion_memorization.py                 # seeds 0 1 2
    python benchmarks/diffusion_memorization.py --train-steps 20 --per-class-samples 8 --seeds 0   # smoke

Writes benchmarks/results/diffusion_memorization.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _diffusion2_eval as ev  # noqa: E402

from prunekit.diffusion import TrainConfig, build_unet, fashion_mnist, train_ddpm_  # noqa: E402
from prunekit.diffusion.ecodiff import ddim_from  # noqa: E402
from prunekit.diffusion.memorization import (Located, copy_threshold, duplicated_subset, forget_, locate,  # noqa: E402
                                             nearest, overlap, unit_activations)
from prunekit.diffusion.units import find_unit_layers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memorized", type=int, nargs="+", default=[1, 5, 8])
    ap.add_argument("--per-memorized", type=int, default=4)
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--per-other", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16], help="the memorizing UNet's widths")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class-samples", type=int, default=30)
    ap.add_argument("--locate-samples", type=int, default=10, help="samples per class for the activations")
    ap.add_argument("--fraction", type=float, default=0.05, help="at most this share of units is located")
    ap.add_argument("--min-z", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion_memorization.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    feats, classes, clf_desc, clf_acc = ev.classifier(own=True)  # started before metrics.py landed
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    tx, ty, ux, uy = duplicated_subset(x, y, args.memorized, per_memorized=args.per_memorized, copies=args.copies,
                                       per_other=args.per_other, seed=0)
    path = ev.OWN / (f"ddpm-memorize-{'-'.join(map(str, args.memorized))}-{args.per_memorized}x{args.copies}-"
                     f"{args.per_other}-{args.train_steps}steps-{'x'.join(map(str, args.channels))}.pt")
    shape = ev.SMALL.model_copy(update={"block_out_channels": tuple(args.channels)})
    unet = build_unet(shape, seed=0)
    if path.is_file():
        state = torch.load(path)
        unet.load_state_dict(state["weights"])
        unet.prunekit_schedule = state["schedule"]
        train_desc = f"cached {path}"
    else:
        rep = train_ddpm_(unet, tx, ty, TrainConfig(steps=args.train_steps, batch_size=32, lr=2e-3, warmup_steps=50,
                                                    seed=0), progress=False)
        ev.OWN.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": unet.state_dict(), "schedule": unet.prunekit_schedule}, path)
        train_desc = str(rep)
    unet.eval()
    print("memorizing model:", train_desc, flush=True)
    train_feats = feats(ux)
    test_feats = feats(xt)
    threshold = copy_threshold(test_feats, train_feats, quantile=0.01)
    memorized = torch.tensor(args.memorized)
    others = torch.tensor([c for c in range(10) if c not in args.memorized])
    layers = find_unit_layers(unet)
    n_units = sum(layer.units for layer in layers)

    def measure(m, seed):
        labels = torch.arange(10 * args.per_class_samples) % 10
        xs = ddim_from(m, torch.randn((len(labels), 1, 32, 32), generator=torch.Generator().manual_seed(1000 + seed)),
                       labels, steps=args.steps)
        f = feats(xs)
        d, idx = nearest(f, train_feats)
        copies = d < threshold
        is_mem = torch.isin(labels, memorized)
        real_other = test_feats[torch.isin(yt, others)][:int((~is_mem).sum())]
        real_mem = test_feats[torch.isin(yt, memorized)][:int(is_mem.sum())]
        return {"memorization_rate_memorized_classes": float(copies[is_mem].float().mean()),
                "memorization_rate_other_classes": float(copies[~is_mem].float().mean()),
                "copies_of_own_class": float((uy[idx][copies & is_mem] == labels[copies & is_mem]).float().mean())
                if bool((copies & is_mem).any()) else None,
                "fid_other_classes": ev.fid(f[~is_mem], real_other),
                "fid_memorized_classes": ev.fid(f[is_mem], real_mem),
                "class_accuracy_memorized": float(classes(xs[is_mem]).eq(labels[is_mem]).float().mean()),
                "class_accuracy_other": float(classes(xs[~is_mem]).eq(labels[~is_mem]).float().mean())}

    runs = []
    for seed in args.seeds:
        k = args.locate_samples
        lab_mem = memorized.repeat_interleave(k)
        lab_oth = others.repeat_interleave(k)
        acts_mem = unit_activations(unet, lab_mem, steps=args.steps, seed=seed, layers=layers)
        acts_oth = unit_activations(unet, lab_oth, steps=args.steps, seed=seed + 500, layers=layers)
        joint = locate(acts_mem, acts_oth, layers, fraction=args.fraction, min_z=args.min_z)
        single = {int(c): locate(acts_mem[lab_mem == c], acts_oth, layers, fraction=args.fraction, min_z=args.min_z)
                  for c in memorized}
        # control: one non-memorized class against the remaining non-memorized ones
        ctrl_c = int(others[0])
        ctrl = locate(acts_oth[lab_oth == ctrl_c], acts_oth[lab_oth != ctrl_c], layers, fraction=args.fraction,
                      min_z=args.min_z)
        pairs = {}
        cs = list(single)
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                pairs[f"{cs[i]}&{cs[j]}"] = overlap(single[cs[i]], single[cs[j]])
            pairs[f"{cs[i]}&control{ctrl_c}"] = overlap(single[cs[i]], ctrl)
        before = measure(unet, seed)
        forgot = copy.deepcopy(unet)
        rep = forget_(forgot, joint)
        after = measure(forgot, seed)
        g = torch.Generator().manual_seed(seed)
        rnd_sel = torch.zeros(n_units, dtype=torch.bool)
        rnd_sel[torch.randperm(n_units, generator=g)[:int(joint.selected.sum())]] = True
        rnd = copy.deepcopy(unet)
        rnd_rep = forget_(rnd, Located(layers, torch.rand(n_units, generator=g), rnd_sel, 0.0))
        random_after = measure(rnd, seed)
        run = {"seed": seed, "located": joint.to_dict(), "overlaps_iou_vs_chance": pairs,
               "before": before, "after_forget": after, "forget": rep.to_dict(),
               "after_random_units": random_after, "random": rnd_rep.to_dict()}
        print(json.dumps({"seed": seed, "located": joint.to_dict()["selected"], "overlaps": pairs,
                          "before": before, "after": after, "random": random_after}), flush=True)
        runs.append(run)
    out = {"when": ev.stamp(), "classifier": clf_desc, "unet": shape.model_dump(mode="json"), "classifier_test_accuracy": clf_acc,
           "memorizing_model": train_desc, "copy_threshold": threshold,
           "threshold_rule": "1% quantile of nearest-training-image distances of real test images (classifier features)",
           "training_set": {"images": len(tx), "unique": len(ux), "memorized_classes": args.memorized},
           "units": n_units, "args": vars(args) | {"out": str(args.out)}, "runs": runs,
           "seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
