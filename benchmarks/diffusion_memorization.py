"""Memorization located and deleted, on a DDPM that memorizes.

The model: a small class-conditional DDPM trained on a tiny Fashion-MNIST subset. The ``--memorized``
classes hold ``--per-memorized`` image(s) each, repeated ``--copies`` times; every other class holds
``--per-other`` distinct images. It is trained in rounds of ``--round-steps`` until its samples of the
memorized classes copy their training images (copy rate >= ``--target``) or a budget runs out (``--max-steps``;
``--max-cpu-minutes`` of this process's CPU time, one thread; ``--max-wall-minutes``), and cached
(``~/.cache/prunekit/diffusion/memorize-<hash>``, a ``save_unet`` folder whose ``prunekit.json`` holds the card:
settings, data hash, rounds, CPU and wall time, the weights' sha256). Each round is saved as it ends
(``memorize-<hash>.partial``), so a killed run resumes where it stopped; a cached model that stopped short of the
target is trained on when a later run gives a larger budget (the budgets count from its first step).

With ``--init`` the model is a saved UNet (the base DDPM of diffusion_train.py) trained on the subset: a model that
already draws clean images memorizes a few repeated ones within minutes, where a fresh small UNet did not in 28
CPU-minutes.

A sample is a **copy** when its nearest training image, in the penultimate features of the Fashion-MNIST
classifier of ``prunekit.diffusion.metrics``, is closer than the copy threshold: the ``--quantile`` quantile of
the same nearest-training-image distance for the 10,000 *real test images* (real new images, never copies),
so that share of real new images would be called copies. Beside it, the same rule in standardized pixels
(``memorization.standardized_pixels``: pixel correlation), which small pixel noise or a lifted background does not
move past its threshold as it moves the features.

Per seed (the seed draws the located trajectories' noise, the random control's units and the samples' noise):
the units the memorized classes over-activate are located (``memorization.locate``: z-score of their mean
|activation| over the DDIM trajectory against the other classes) and deleted (``forget_``, no retraining);
the copy rate is measured before and after, beside FID-FMNIST and the paired MSE (same noise, same class) on
the non-memorized classes, against deleting as many random units.

    nice -n 10 python benchmarks/diffusion_memorization.py --db prunekit-results.db      # seeds 0 1 2
    python benchmarks/diffusion_memorization.py --max-steps 20 --round-steps 10 --per-class-samples 4 --seeds 0 \
        --out /tmp/mem.json                                                                     # smoke

Writes benchmarks/results/diffusion_memorization.json (and PNG grids beside it); with ``--db``, one run per
model and seed in the results store, grids embedded, so ``prunekit report`` shows them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from prunekit.bench.protocol import tensor_hash
from prunekit.diffusion import TrainConfig, UNetConfig, build_unet, ddim_sample, fashion_mnist, load_unet, save_unet, \
    train_ddpm_
from prunekit.diffusion.ddpm import read_unet_meta
from prunekit.diffusion.memorization import Located, copy_threshold, duplicated_subset, forget_, locate, nearest, \
    overlap, standardized_pixels, unit_activations
from prunekit.diffusion.metrics import CACHE, features, frechet_distance, grid_pixels, load_classifier, unet_cost
from prunekit.diffusion.units import find_unit_layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _diffusion2_eval import class_fid, class_reference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memorized", type=int, nargs="+", default=[1, 5, 8])
    ap.add_argument("--per-memorized", type=int, default=1, help="distinct images per memorized class (1)")
    ap.add_argument("--copies", type=int, default=20, help="repeats of each memorized image (20)")
    ap.add_argument("--per-other", type=int, default=6, help="distinct images per other class (6)")
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16], help="the UNet's widths (8 16 16)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this saved UNet (e.g. the base DDPM of diffusion_train.py) instead of a fresh one "
                         "of --channels: a model that already draws clean images and then trains on the duplicated "
                         "subset, as a fine-tune on a few repeated images memorizes them")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights sampled from (0.999; without it "
                    "the raw weights at this lr leave grey noise in the background and no sample counts as a copy)")
    ap.add_argument("--round-steps", type=int, default=250, help="training steps between copy checks (250)")
    ap.add_argument("--max-steps", type=int, default=6000)
    ap.add_argument("--max-cpu-minutes", type=float, default=15.0, help="training budget in CPU minutes (15)")
    ap.add_argument("--max-wall-minutes", type=float, default=40.0, help="training budget in wall minutes (40)")
    ap.add_argument("--target", type=float, default=0.8, help="stop when this share of memorized-class samples copy")
    ap.add_argument("--quantile", type=float, default=0.01, help="copy threshold: this quantile of real test images' "
                                                                 "nearest-training-image distance (0.01)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class-samples", type=int, default=20)
    ap.add_argument("--fid-samples", type=int, default=0,
                    help="FID-FMNIST (and precision/recall) of the non-memorized classes on this many samples of "
                         "their own (balanced; real references: two disjoint draws of their training images); "
                         "0: on the per-class samples against test images (the earlier protocol)")
    ap.add_argument("--locate-samples", type=int, default=10, help="trajectories per class for the activations")
    ap.add_argument("--fraction", type=float, default=0.05, help="at most this share of units is located")
    ap.add_argument("--min-z", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of every sample and trajectory (10)")
    ap.add_argument("--db", default=None, help="also store the runs (and grids) in this results store")
    ap.add_argument("--out", type=Path, default=RESULTS / "diffusion_memorization.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="write --out from these per-seed results files (same model and settings) and stop")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------ the model


def _settings(args: argparse.Namespace) -> dict:
    keys = ("memorized", "per_memorized", "copies", "per_other", "batch_size", "lr", "round_steps",
            "target", "quantile", "steps")
    return ({k: getattr(args, k) for k in keys} | ({"ema": args.ema} if args.ema else {})
            | ({} if args.init is not None else {"channels": args.channels}))


def memorizing_model(args, tx, ty, ux, copies_of):
    """The cached memorizing UNet for these settings and data, trained (in rounds, until it copies) when missing,
    resumed from its last finished round when a run was killed. Returns (unet, card)."""
    shape = UNetConfig(block_out_channels=tuple(args.channels), attention_head_dim=8, norm_num_groups=8)
    init = read_unet_meta(args.init) if args.init is not None else None
    unet_id = {"init": str(args.init), "init_sha256": init["weights_sha256"]} if init else shape.model_dump(mode="json")
    ident = {"settings": _settings(args), "unet": unet_id, "data": tensor_hash(tx),
             "labels": tensor_hash(ty), "v": 2}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    folder, partial = CACHE / f"memorize-{key}", CACHE / f"memorize-{key}.partial"
    if (folder / "prunekit.json").is_file():
        card = read_unet_meta(folder)["card"]
        left = (card["steps"] < args.max_steps and card["cpu_seconds"] < args.max_cpu_minutes * 60
                and card["seconds"] < args.max_wall_minutes * 60)
        if card.get("reached_target") or not left:
            return load_unet(folder), {**card, "cached": str(folder)}
        partial = folder  # it stopped short of the target and the budget now given is larger: train on
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (partial / "prunekit.json").is_file():
        unet, state = load_unet(partial), read_unet_meta(partial)["card"]
        print(f"  resuming after round {len(state['rounds'])} ({state['steps']} steps)", flush=True)
    else:
        unet = load_unet(args.init) if args.init is not None else build_unet(shape, seed=0)
        state = {"steps": 0, "cpu_seconds": 0.0, "seconds": 0.0, "rounds": []}
    rounds, done = state["rounds"], state["steps"]
    cpu0, wall0 = time.process_time() - state["cpu_seconds"], time.perf_counter() - state["seconds"]
    while (done < args.max_steps and time.process_time() - cpu0 < args.max_cpu_minutes * 60
           and time.perf_counter() - wall0 < args.max_wall_minutes * 60):
        if rounds and rounds[-1]["copy_rate_memorized"] >= args.target:
            break
        cfg = TrainConfig(steps=min(args.round_steps, args.max_steps - done), batch_size=args.batch_size, lr=args.lr,
                          ema_decay=args.ema or None,
                          warmup_steps=50 if done == 0 else 0, seed=len(rounds))
        rep = train_ddpm_(unet, tx, ty, cfg, progress=False)
        done += rep.steps
        check = copies_of(unet, seed=999)
        rounds.append({"steps": done, "cpu_seconds": time.process_time() - cpu0, "seconds": time.perf_counter() - wall0,
                       "loss": rep.final_loss, **check})
        print(f"  round {len(rounds)}: {done} steps, CPU {rounds[-1]['cpu_seconds']:.0f}s, wall "
              f"{rounds[-1]['seconds']:.0f}s, loss {rep.final_loss:.4f}, copy rate memorized "
              f"{check['copy_rate_memorized']:.2f} / other {check['copy_rate_other']:.2f}, median distance "
              f"{check['median_distance_memorized']:.2f} / {check['median_distance_other']:.2f}", flush=True)
        save_unet(unet, partial, overwrite=True, meta={"card": {"steps": done, "rounds": rounds,
                                                                "cpu_seconds": rounds[-1]["cpu_seconds"],
                                                                "seconds": rounds[-1]["seconds"]}})
    card = {"identity": ident, "key": key, "steps": done, "cpu_seconds": time.process_time() - cpu0,
            "seconds": time.perf_counter() - wall0, "rounds": rounds,
            "reached_target": bool(rounds and rounds[-1]["copy_rate_memorized"] >= args.target),
            "budget": {"max_steps": args.max_steps, "max_cpu_minutes": args.max_cpu_minutes,
                       "max_wall_minutes": args.max_wall_minutes},
            "training_images": len(tx), "unique_images": len(ux), "threads": torch.get_num_threads()}
    save_unet(unet, folder, overwrite=True, meta={"card": card})
    if partial != folder:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    card["weights_sha256"] = read_unet_meta(folder)["weights_sha256"]
    return unet, {**card, "cached": str(folder), "trained_now": True}


# ------------------------------------------------------------------------------------------ measurement


def spread(values) -> dict:
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v)}


def png_bytes(images: torch.Tensor, rows: int) -> bytes:
    from prunekit.diffusion.metrics import _png

    return _png(grid_pixels(images, rows))


def summarize(runs: list[dict]) -> dict:
    """Mean, spread and range over the seeds' runs of every number of each row."""
    rows = {}
    for name, part in (("trained on duplicates", "before"), ("located units deleted", "after_forget"),
                       ("random units deleted", "after_random_units")):
        keys = [k for k, v in runs[0][part].items() if isinstance(v, (int, float)) or v is None]
        rows[name] = {k: spread(r[part][k] for r in runs) for k in keys}
    return rows


def merge(out: Path, parts: list[Path]) -> int:
    """One results file from per-seed runs of the same memorizing model and settings (one process per seed)."""
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"--merge: no results file {', '.join(missing)}; run each seed first")
    data = [json.loads(Path(p).read_text()) for p in parts]
    same = ("memorizing_model", "copy_threshold", "training_set")
    for d, p in zip(data[1:], parts[1:]):
        ignore = {"seeds", "out", "db", "merge"}
        if any(d[k] != data[0][k] for k in same) or \
                {k: v for k, v in d["args"].items() if k not in ignore} != \
                {k: v for k, v in data[0]["args"].items() if k not in ignore}:
            raise SystemExit(f"{p}: another memorizing model or other settings than {parts[0]}; not merged")
    runs = sorted((r for d in data for r in d["runs"]), key=lambda r: r["seed"])
    if len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit("the files hold the same seed twice; not merged")
    merged = {**data[0], "runs": runs, "summary": summarize(runs), "merged_from": [str(p) for p in parts],
              "seconds": sum(d["seconds"] for d in data)}
    merged["args"] = {**data[0]["args"], "seeds": [r["seed"] for r in runs], "out": str(out)}
    out.write_text(json.dumps(merged, indent=1, default=str))
    print(f"wrote {out} ({len(runs)} seeds)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.merge:
        return merge(args.out, args.merge)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    net, clf_card = load_classifier()

    def feats(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(features(net, x))

    @torch.no_grad()
    def classes(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])

    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    tx, ty, ux, uy = duplicated_subset(x, y, args.memorized, per_memorized=args.per_memorized, copies=args.copies,
                                       per_other=args.per_other, seed=0)
    train_feats, test_feats = feats(ux), feats(xt)
    threshold = copy_threshold(test_feats, train_feats, quantile=args.quantile)
    real_d, _ = nearest(test_feats, train_feats)
    train_pix = standardized_pixels(ux)  # the second criterion: pixel correlation (blind to brightness/contrast)
    pixel_threshold = copy_threshold(standardized_pixels(xt), train_pix, quantile=args.quantile)
    memorized = torch.tensor(args.memorized)
    others = torch.tensor([c for c in range(10) if c not in args.memorized])
    print(f"training set: {len(tx)} images, {len(ux)} distinct; copy threshold {threshold:.3f} "
          f"({args.quantile:.0%} quantile of real test images' nearest-training-image distance; their median "
          f"{float(real_d.median()):.3f})", flush=True)

    def copies_of(unet, seed: int, per_class: int = 8) -> dict:
        labels = torch.arange(10).repeat_interleave(per_class)
        d, _ = nearest(feats(ddim_sample(unet, labels, steps=args.steps, seed=seed)), train_feats)
        is_mem = torch.isin(labels, memorized)
        return {"copy_rate_memorized": float((d[is_mem] < threshold).float().mean()),
                "copy_rate_other": float((d[~is_mem] < threshold).float().mean()),
                "median_distance_memorized": float(d[is_mem].median()),
                "median_distance_other": float(d[~is_mem].median())}

    unet, card = memorizing_model(args, tx, ty, ux, copies_of)
    unet.eval()
    print(f"memorizing model: {card['steps']} steps, CPU {card['cpu_seconds']:.0f}s, wall {card['seconds']:.0f}s "
          f"({card['cached']})", flush=True)
    layers = find_unit_layers(unet)
    n_units = sum(layer.units for layer in layers)
    n = args.per_class_samples
    labels = torch.arange(10).repeat_interleave(n)
    is_mem = torch.isin(labels, memorized)
    # real references for FID on the non-memorized classes: two disjoint draws of real test images of those
    # classes, as many as the samples; the floor is the FID between them
    g = torch.Generator().manual_seed(0)
    pool = torch.isin(yt, others).nonzero().flatten()
    pool = pool[torch.randperm(len(pool), generator=g)]
    k_other = int((~is_mem).sum())
    real_a, real_b = test_feats[pool[:k_other]], test_feats[pool[k_other:2 * k_other]]
    fid_floor = frechet_distance(real_a.double().numpy(), real_b.double().numpy())
    fid_labels, fid_ref = None, None
    if args.fid_samples:
        fid_labels, fid_ref = class_reference(args.fid_samples, others, x, y, feats)
        print(f"FID of the non-memorized classes on {len(fid_labels)} samples; floors {fid_ref['floors']}",
              flush=True)

    def measure(m, seed: int, reference: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
        xs = ddim_sample(m, labels, steps=args.steps, seed=1000 + seed)
        f = feats(xs)
        d, idx = nearest(f, train_feats)
        cp = d < threshold
        own = (uy[idx] == labels)
        dp, _ = nearest(standardized_pixels(xs), train_pix)
        cpp = dp < pixel_threshold
        out = {"copy_rate_memorized": float(cp[is_mem].float().mean()),
               "pixel_copy_rate_memorized": float(cpp[is_mem].float().mean()),
               "pixel_copy_rate_other": float(cpp[~is_mem].float().mean()),
               "copy_rate_other": float(cp[~is_mem].float().mean()),
               "copies_of_own_class_image": float(own[cp].float().mean()) if bool(cp.any()) else None,
               "median_nn_distance_memorized": float(d[is_mem].median()),
               "median_nn_distance_other": float(d[~is_mem].median()),
               "fid_other": frechet_distance(f[~is_mem].double().numpy(), real_a.double().numpy()),
               "fid_other_floor": fid_floor,
               "class_accuracy_memorized": float(classes(xs[is_mem]).eq(labels[is_mem]).float().mean()),
               "class_accuracy_other": float(classes(xs[~is_mem]).eq(labels[~is_mem]).float().mean())}
        if fid_labels is not None:
            out.update(class_fid(m, fid_labels, fid_ref, feats, steps=args.steps, seed=2000 + seed))
        if reference is not None:
            out["paired_mse_other"] = float((xs[~is_mem] - reference[~is_mem]).pow(2).mean())
            out["paired_mse_memorized"] = float((xs[is_mem] - reference[is_mem]).pow(2).mean())
        return out, xs

    grid_dir = args.out.parent / args.out.stem  # beside the results file, named after it
    grid_dir.mkdir(parents=True, exist_ok=True)
    grid_rows = min(n, 8)
    pick = torch.cat([torch.arange(c * n, c * n + grid_rows) for c in range(10)])
    runs = []
    for seed in args.seeds:
        k = args.locate_samples
        lab_mem, lab_oth = memorized.repeat_interleave(k), others.repeat_interleave(k)
        acts_mem = unit_activations(unet, lab_mem, steps=args.steps, seed=seed, layers=layers)
        acts_oth = unit_activations(unet, lab_oth, steps=args.steps, seed=seed + 500, layers=layers)
        joint = locate(acts_mem, acts_oth, layers, fraction=args.fraction, min_z=args.min_z)
        single = {int(c): locate(acts_mem[lab_mem == c], acts_oth, layers, fraction=args.fraction, min_z=args.min_z)
                  for c in memorized}
        ctrl_c = int(others[0])  # control: one non-memorized class against the remaining non-memorized ones
        ctrl = locate(acts_oth[lab_oth == ctrl_c], acts_oth[lab_oth != ctrl_c], layers, fraction=args.fraction,
                      min_z=args.min_z)
        cs = list(single)
        pairs = {f"{cs[i]}&{cs[j]}": overlap(single[cs[i]], single[cs[j]])
                 for i in range(len(cs)) for j in range(i + 1, len(cs))}
        pairs.update({f"{c}&control{ctrl_c}": overlap(single[c], ctrl) for c in cs})
        before, xs_before = measure(unet, seed)
        forgot = copy.deepcopy(unet)
        rep = forget_(forgot, joint)
        after, xs_after = measure(forgot, seed, xs_before)
        gr = torch.Generator().manual_seed(seed)
        rnd_sel = torch.zeros(n_units, dtype=torch.bool)
        rnd_sel[torch.randperm(n_units, generator=gr)[:int(joint.selected.sum())]] = True
        rnd = copy.deepcopy(unet)
        rnd_rep = forget_(rnd, Located(layers, torch.rand(n_units, generator=gr), rnd_sel, 0.0))
        random_after, xs_rnd = measure(rnd, seed, xs_before)
        grids = {}
        for name, xs in (("before", xs_before), ("forget", xs_after), ("random", xs_rnd)):
            path = grid_dir / f"{name}-seed{seed}.png"
            path.write_bytes(png_bytes(xs[pick], 10))
            grids[name] = str(path.relative_to(args.out.parent))
        run = {"seed": seed, "located": joint.to_dict(), "overlaps_iou_vs_chance": pairs,
               "before": {**before, **unet_cost(unet)}, "after_forget": {**after, **unet_cost(forgot)},
               "forget": rep.to_dict(), "after_random_units": {**random_after, **unet_cost(rnd)},
               "random": rnd_rep.to_dict(), "grids": grids}
        print(json.dumps({"seed": seed, "located": joint.to_dict()["selected"], "before": before, "after": after,
                          "random": random_after}), flush=True)
        runs.append(run)
    (grid_dir / "training-images.png").write_bytes(png_bytes(ux, 10 if len(ux) % 10 == 0 else 1))
    rows = summarize(runs)
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "benchmark": "diffusion_memorization",
           "classifier": f"prunekit.diffusion.metrics FeatureNet (test accuracy {clf_card.get('test_accuracy')})",
           "classifier_test_accuracy": clf_card.get("test_accuracy"), "memorizing_model": card,
           "copy_threshold": threshold, "pixel_copy_threshold": pixel_threshold,
           "pixel_threshold_rule": f"{args.quantile} quantile of the same distance in standardized pixels "
                                   "(sqrt(2(1 - r)), r the pixel correlation)",
           "threshold_rule": f"{args.quantile} quantile of the nearest-training-image distance of the 10,000 real "
                             "test images (classifier features)",
           "real_test_nn_distance": {"q0.001": float(torch.quantile(real_d.double(), 0.001)),
                                     "q0.01": float(torch.quantile(real_d.double(), 0.01)),
                                     "q0.05": float(torch.quantile(real_d.double(), 0.05)),
                                     "median": float(real_d.median())},
           "training_set": {"images": len(tx), "unique": len(ux), "memorized_classes": args.memorized,
                            "other_classes": others.tolist()},
           "units": n_units, "samples_per_class": n, "summary": rows, "runs": runs,
           "args": {**vars(args), "out": str(args.out)}, "seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    if args.db:
        store_runs(args, out)
    return 0


def store_runs(args, out: dict) -> None:
    """One store row per (model, seed), with its grid (benchmarks/diffusion_store.py reads the JSON just written)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from diffusion_store import store

    print(f"stored {store(args.db, 'memorization', args.out)} runs in {args.db}")


if __name__ == "__main__":
    sys.exit(main())
