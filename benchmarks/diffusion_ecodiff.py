"""EcoDiff at 20% of the UNet's parameters, no retraining, against unit pruning by weight magnitude and at
random at the same parameter count: FID-FMNIST (with its noise floor), the paired difference to the unpruned
model's samples from the same noise, precision / recall (with their floor), the class accuracy of the samples, and measured sampling time.

    nice -n 10 python benchmarks/diffusion_ecodiff.py                      # seeds 0 1 2
    python benchmarks/diffusion_ecodiff.py --seeds 0 --samples 64 --iterations 3   # smoke

Writes benchmarks/results/diffusion_ecodiff.json. See _diffusion2_eval.py for the base model and FID-FMNIST.
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

from prunekit.diffusion import fashion_mnist  # noqa: E402
from prunekit.diffusion.ecodiff import EcoDiffConfig, ddim_from, ecodiff_, learn_masks  # noqa: E402
from prunekit.diffusion.units import find_unit_layers, keep_lowest_removed, remove_units_  # noqa: E402
from prunekit.metrics.macs import count_macs  # noqa: E402


def magnitude_scores(unet, layers) -> list[torch.Tensor]:
    """Each unit's L1 weight norm (a resnet group: its conv1 rows and conv2 columns; a head: its q/k/v rows and
    to_out columns), divided by its parameter count: the static, data-free baseline."""
    out = []
    for layer in layers:
        m = unet.get_submodule(layer.name)
        if layer.kind == "resnet":
            per = m.conv1.weight.abs().flatten(1).sum(1) + m.conv2.weight.abs().transpose(0, 1).flatten(1).sum(1)
        else:
            per = sum(lin.weight.abs().sum(1) for lin in (m.to_q, m.to_k, m.to_v)) + m.to_out[0].weight.abs().sum(0)
        out.append(per.detach().view(layer.units, layer.size).sum(1) / layer.params)
    return out


def pruned_by(unet, scores_fn, sparsity: float):
    m = copy.deepcopy(unet)
    layers = find_unit_layers(m)
    total = sum(p.numel() for p in m.parameters())
    rep = remove_units_(m, layers, keep_lowest_removed(layers, scores_fn(m, layers), sparsity * total, "params"))
    return m, rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a save_unet folder (default: the cached base DDPM)")
    ap.add_argument("--train-steps", type=int, default=1500, help="if no cached base: train a small one this long")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--traj-steps", type=int, default=5, help="DDIM steps of the trajectories masks learn on")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps for evaluation samples")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion_ecodiff.json")
    ap.add_argument("--db", default=None, help="also store the runs (and grids) in this results store")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    base, base_desc = ev.base_model(args.model, args.train_steps)
    ecos, reports = {}, {}
    for seed in args.seeds:  # the masks first: they need no classifier
        cfg = EcoDiffConfig(sparsity=args.sparsity, steps=args.traj_steps, iterations=args.iterations,
                            batch_size=args.batch_size, seed=seed)
        m = copy.deepcopy(base)
        masks = learn_masks(m, cfg)
        reports[seed] = (ecodiff_(m, cfg, masks=masks), masks.seconds)
        print(reports[seed][0], flush=True)
        ecos[seed] = m
    feats, classes, clf_desc, clf_acc = ev.classifier()
    xt, yt = fashion_mnist("test")
    test_feats = feats(xt)
    g = torch.Generator().manual_seed(1234)
    real = test_feats[torch.randperm(len(xt), generator=g)[:args.samples]]
    labels = torch.arange(args.samples) % 10
    noise = torch.randn((args.samples, 1, 32, 32), generator=torch.Generator().manual_seed(99))
    inputs = {"sample": xt[:1], "timestep": torch.zeros(1, dtype=torch.long), "class_labels": yt[:1]}
    base_macs = count_macs(base, inputs)
    base_params = sum(p.numel() for p in base.parameters())

    def evaluate(name, m, extra=None):
        t0 = time.perf_counter()
        x = ddim_from(m, noise, labels, steps=args.steps)
        f = feats(x)
        row = {"variant": name, "params": sum(p.numel() for p in m.parameters()),
               "params_removed": 1 - sum(p.numel() for p in m.parameters()) / base_params,
               "macs_per_step": count_macs(m, inputs), "macs_kept": count_macs(m, inputs) / base_macs,
               "fid": ev.fid(f, real), **ev.precision_recall(real, f), "class_accuracy": float(classes(x).eq(labels).float().mean()),
               "sample_seconds": time.perf_counter() - t0, **(extra or {})}
        row["paired_mse_to_base"] = float((x - base_x).pow(2).mean()) if name != "unpruned" else 0.0
        row["grid"] = ev.save_class_grid(x, labels, args.out, name)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        return row, x

    rows = []
    base_x = None
    r, base_x = evaluate("unpruned", base)
    rows.append(r)
    mag, _ = pruned_by(base, magnitude_scores, args.sparsity)
    rows.append(evaluate("magnitude units (no retraining)", mag)[0])
    for seed in args.seeds:
        if seed == args.seeds[0]:  # one random draw: the CPU budget goes to EcoDiff's seeds
            gen = torch.Generator().manual_seed(seed)
            rnd, _ = pruned_by(base, lambda m, layers: [torch.rand(layer.units, generator=gen) for layer in layers],
                               args.sparsity)
            rows.append(evaluate(f"random units seed {seed}", rnd, {"seed": seed})[0])
        rep, mask_seconds = reports[seed]
        rows.append(evaluate(f"EcoDiff seed {seed}", ecos[seed], {"seed": seed, "mask_seconds": mask_seconds,
                                                         "mse_first": rep.mse_first, "mse_last": rep.mse_last,
                                                         "closed_by_masks": rep.closed_by_masks})[0])
    first = ecos[args.seeds[0]]
    tb = 8
    nb, lb = noise[:tb], labels[:tb]
    timing = ev.sampling_times({"unpruned": lambda: ddim_from(base, nb, lb, steps=args.steps),
                                "ecodiff": lambda: ddim_from(first, nb, lb, steps=args.steps)})
    real_floors = ev.floors(test_feats, args.samples)
    floor = real_floors["fid"]
    out = {"when": ev.stamp(), "base": base_desc, "classifier": clf_desc, "classifier_test_accuracy": clf_acc,
           "fid_noise_floor": floor, "precision_recall_floor": {k: real_floors[k] for k in ("precision", "recall")}, "samples": args.samples, "eval_ddim_steps": args.steps, "args": vars(args) | {
               "model": str(args.model), "out": str(args.out)}, "rows": rows,
           "sampling_time_8_images": timing, "seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"noise floor {floor:.2f}; timing {timing['ratios']}; wrote {args.out}")
    if args.db:
        from diffusion_store import store

        print(f"stored {store(args.db, 'ecodiff', args.out)} runs in {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
