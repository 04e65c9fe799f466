"""Expert pruning and merging on a small Qwen3-MoE trained here on Python's documentation.

A BPE tokenizer (4,096 tokens) and a 4-layer Qwen3-MoE (8 experts per layer, top-2, hidden 128, with
the router's load-balancing loss) are trained for a few CPU minutes on the calibration split of
Python's docs, so the experts differ. Then 25% and 50% of every layer's experts are removed by router
frequency, REAP and greedy reconstruction, by random choice (3 seeds, the floor any score must beat),
or merged (M-SMoE, with and without neuron alignment); perplexity is measured on held-out windows of
the evaluation split (disjoint files). Calibration: 32 windows of 128 tokens, three independent draws (each score runs on each).

    nice -n 10 python benchmarks/experts_tiny_moe.py                  # the README's table
    python benchmarks/experts_tiny_moe.py --steps 20 --eval-windows 4  # smoke run

The trained model is saved (``--work``/tiny-qwen3-moe) with its tokenizer, so the CLI runs on it:
``prunekit prune --model <work>/tiny-qwen3-moe --experts 0.5 --expert-score reap --out fewer-experts/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from prunekit.datasets.text import calibration_windows, documents, eval_windows, split_documents
from prunekit.experts import find_moe_layers, merge_experts_, prune_experts_
from prunekit.metrics.perplexity import perplexity


def train_tokenizer(folder: Path, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = split_documents(documents("pydocs"), "calibration")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.text for d in docs), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(str(folder))
    return fast


def build(vocab: int, seed: int):
    import transformers as tf

    config = tf.Qwen3MoeConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                               num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=512,
                               output_router_logits=True, router_aux_loss_coef=0.01, tie_word_embeddings=True,
                               bos_token_id=0, eos_token_id=0, pad_token_id=None)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config)


def train(model, train_ids: torch.Tensor, steps: int, batch: int, lr: float) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, train_ids.shape[0], (batch,), generator=torch.Generator().manual_seed(step))
        x = train_ids[idx]
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {losses[-1]:.3f}", flush=True)
    model.eval()
    model.config.output_router_logits = False
    return {"steps": steps, "batch": batch, "lr": lr, "last_loss": sum(losses[-10:]) / 10,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def random_prune_(model, sparsity: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    layers = find_moe_layers(model)
    E = layers[0].num_experts
    keep = E - int(sparsity * E)
    for layer in layers:
        layer.keep_(sorted(torch.randperm(E, generator=gen)[:keep].tolist()))
    model.config.num_experts = keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/prunekit-bench-moe")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="calibration samples (disjoint draws of the calibration split); scores are run on each")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    folder = work / "tiny-qwen3-moe"
    done = folder / "train.json"
    settings = {k: getattr(args, k) for k in ("vocab", "steps", "batch", "seqlen", "lr")}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        info = json.loads(done.read_text())
    else:
        folder.mkdir(parents=True, exist_ok=True)
        tok = train_tokenizer(folder, args.vocab)
        train_ids = calibration_windows(tok, "pydocs", 4000, args.seqlen, seed=1)
        model = build(tok.vocab_size, seed=0)
        info = {"settings": settings, **train(model, train_ids, args.steps, args.batch, args.lr),
                "params": sum(p.numel() for p in model.parameters())}
        model.save_pretrained(str(folder))
        done.write_text(json.dumps(info, indent=2))
    print(f"model: {info['params']:,} parameters, trained {info['steps']} steps in {info['wall_s']:.0f} s wall "
          f"({info['cpu_s']:.0f} s CPU), final loss {info['last_loss']:.3f}", flush=True)
    evals = eval_windows(tok, "pydocs", args.eval_windows, args.seqlen)
    calibs = {s: calibration_windows(tok, "pydocs", args.nsamples, args.seqlen, seed=100 + s) for s in args.calib_seeds}

    rows = []

    def ppl_of(m) -> float:
        return perplexity(m, evals, batch_size=8, progress=False)

    def add(label: str, ppls: list[float], params: int | None, seconds: float | None = None, kept=None) -> None:
        rows.append({"label": label, "ppl": sum(ppls) / len(ppls), "ppl_min": min(ppls), "ppl_max": max(ppls),
                     "ppls": ppls, "params": params, "cpu_s": seconds, "kept": kept})
        spread = f" [{min(ppls):.2f}–{max(ppls):.2f}]" if len(ppls) > 1 else ""
        print(f"{label:<40} ppl {sum(ppls) / len(ppls):8.3f}{spread}" + (f"  params {params:,}" if params else "") +
              (f"  {seconds:.1f} s CPU" if seconds else ""), flush=True)

    add("dense (8 experts)", [ppl_of(model)], sum(p.numel() for p in model.parameters()))
    for sparsity in (0.25, 0.5):
        runs = [(f"remove {sparsity:.0%} by {score}", dict(score=score)) for score in ("frequency", "reap", "reconstruction")]
        runs += [(f"merge {sparsity:.0%} (M-SMoE)", dict(merge=True, align=True)),
                 (f"merge {sparsity:.0%} (M-SMoE, unaligned)", dict(merge=True, align=False))]
        for label, opts in runs:
            ppls, cpu, kept, params = [], 0.0, [], None
            for s, calib in calibs.items():
                m = copy.deepcopy(model)
                t0 = time.process_time()
                if opts.get("merge"):
                    r = merge_experts_(m, sparsity, calibration=calib, align=opts["align"], progress=False)
                else:
                    r = prune_experts_(m, sparsity, score=opts["score"], calibration=calib, progress=False)
                cpu += time.process_time() - t0
                kept.append([l.kept for l in r.layers])
                params = sum(p.numel() for p in m.parameters())
                ppls.append(ppl_of(m))
            add(label, ppls, params, cpu / len(calibs), kept)
        ppls = []
        for seed in range(3):
            m = copy.deepcopy(model)
            random_prune_(m, sparsity, seed)
            ppls.append(ppl_of(m))
        add(f"remove {sparsity:.0%} at random (3 seeds)", ppls, None)
    print(f"\n| model | perplexity, mean [min–max] over {len(calibs)} calibration samples | parameters |\n|---|---:|---:|")
    for r in rows:
        params = f"{r['params']:,}" if r.get("params") else ""
        spread = f" [{r['ppl_min']:.1f}–{r['ppl_max']:.1f}]" if len(r["ppls"]) > 1 else ""
        print(f"| {r['label']} | {r['ppl']:.1f}{spread} | {params} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "train": info, "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
