"""all-MiniLM-L6-v2 (BERT, 384 wide, 12 heads of 32) cut along its residual width with
``prunekit.shrink.encoder.prune_encoder_width_`` (whole heads go with the width: 75% width = 288 channels, 9 heads),
and compared with the dense model on sentences of Python's docs it never saw (the held-out split), as
sentence-transformers uses it (mean pooling over real tokens, L2-normalised):

- cosine of each pruned sentence embedding with the dense one restricted to the kept channels (the same axes);
- Spearman correlation of all pairwise sentence similarities, pruned against dense (does the space agree?);
- top-1 / top-10 nearest-neighbour agreement (would retrieval return the same sentences?);
- forward latency on a batch, paired and interleaved (prunekit.infra.latency, one thread).

Variants: importance activation (pydocs calibration-split sentences) with and without the LayerNorm correction, and
magnitude; every head kept (each cut to hidden/12) or whole heads removed; widths 75% and 50%.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/encoder_width_minilm.py

Results: ``benchmarks/results/encoder_width_minilm.json`` (with wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def sentences(split: str, n: int, seed: int) -> list[str]:
    from prunekit.datasets.text import documents, split_documents

    out = []
    for d in split_documents(documents("pydocs"), split):
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", d.text)):
            if 40 <= len(s) <= 300 and s.count(" ") >= 5 and not re.search(r"[:=*`_|]{2}|^\.\.", s):
                out.append(s)
    random.Random(seed).shuffle(out)
    return out[:n]


@torch.no_grad()
def embed(model, batches) -> torch.Tensor:
    vecs = []
    for b in batches:
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        vecs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(vecs)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def agreement(dense: torch.Tensor, pruned: torch.Tensor, kept: torch.Tensor | None) -> dict[str, float]:
    n = dense.shape[0]
    out: dict[str, float] = {}
    if kept is not None:
        d = torch.nn.functional.normalize(dense[:, kept], dim=-1)
        cos = (d * pruned).sum(-1)
        out.update(cosine_mean=float(cos.mean()), cosine_p05=float(cos.quantile(0.05)))
    sd, sp = dense @ dense.T, pruned @ pruned.T
    iu = torch.triu_indices(n, n, 1)
    out["spearman_pairwise"] = spearman(sd[iu[0], iu[1]], sp[iu[0], iu[1]])
    sd.fill_diagonal_(-2)
    sp.fill_diagonal_(-2)
    out["top1_agreement"] = float((sd.argmax(1) == sp.argmax(1)).double().mean())
    td, tp = sd.topk(10, dim=1).indices, sp.topk(10, dim=1).indices
    out["top10_overlap"] = float(sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(td, tp)) / (10 * n))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "encoder_width_minilm.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModel, AutoTokenizer

    from prunekit.infra.latency import compare_latency
    from prunekit.models.packaged import packaged_model_path
    from prunekit.shrink.encoder import prune_encoder_width_

    w0, c0 = time.perf_counter(), time.process_time()
    path = packaged_model_path("minilm-l6")
    tok = AutoTokenizer.from_pretrained(str(path))
    dense = AutoModel.from_pretrained(str(path)).eval()

    def batches(texts):
        return [dict(tok(texts[i:i + args.batch], padding=True, truncation=True, max_length=128,
                         return_tensors="pt")) for i in range(0, len(texts), args.batch)]

    test = batches(sentences("evaluation", args.sentences, 0))
    calib = batches(sentences("calibration", args.calibration, 1))
    ref = embed(dense, test)
    result: dict = {"command": "OMP_NUM_THREADS=1 python benchmarks/encoder_width_minilm.py", "threads": 1,
                    "sentences": sum(b["input_ids"].shape[0] for b in test), "calibration_sentences":
                    sum(b["input_ids"].shape[0] for b in calib), "load_before": os.getloadavg(), "runs": {}}
    variants = [("activation", True, "head_dim", 288), ("activation", False, "head_dim", 288),
                ("magnitude", True, "head_dim", 288), ("activation", True, "heads", 288),
                ("activation", True, "head_dim", 192)]
    models = {"dense": dense}
    for importance, rescale, attention, width in variants:
        name = f"{importance}{'+norms' if rescale else ''} {attention}@{width}"
        model = copy.deepcopy(dense)
        report = prune_encoder_width_(model, width, importance=importance, calibration=calib, rescale_norms=rescale,
                                      attention=attention)
        kept = torch.tensor(report.kept)
        got = embed(model, test)
        result["runs"][name] = {"report": {k: v for k, v in report.to_dict().items() if k != "kept"}, "params_kept": report.params_after / report.params_before,
                                **agreement(ref, got, kept)}
        models[name] = model
        print(name, json.dumps(result["runs"][name], default=str), flush=True)
    example = test[0]
    timed = ("dense", "activation+norms head_dim@288", "activation+norms heads@288", "activation+norms head_dim@192")
    cmp = compare_latency({k: models[k] for k in timed}, example, budget_s=60.0, threads=1)
    result["latency"] = {n: {"median_ms": t.median_ms, "spread": t.spread, "noisy": t.noisy, "why": t.reasons()}
                         for n, t in cmp.timings.items()}
    for n in timed[1:]:
        result["latency"][n]["speedup"] = cmp.timings["dense"].median_ms / cmp.timings[n].median_ms
    result.update(wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0, load_after=os.getloadavg(),
                  batch_shape=list(example["input_ids"].shape))
    Path(args.results).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["latency"], indent=2))


if __name__ == "__main__":
    main()
