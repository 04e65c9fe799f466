"""Held-out perplexity of the dense SmolLM2-135M and a distilled student folder in transformers, scored two ways
over the same ``--windows`` × 512 tokens of the evaluation split of Python's docs: every token of each window
(prunekit's eval), and only the second half of each window — the tokens with at least 256 tokens of context,
which is what ``llama-perplexity`` scores. The two ratios say whether a gap seen in llama.cpp comes from the
scoring or from the conversion.

    python benchmarks/shrink_kd_eval_halves.py /tmp/shrink_kd_budget/student      # after shrink_kd_budget.py

A student distilled in a cut vocabulary (its folder holds ``prunekit-vocab.json``: ``shrink_kd_budget.py --vocab``)
is scored in its own tokenizer's windows of the same split, beside the dense model cut to the same ids
(``dense_vocab``, the like-for-like baseline: ``ratio_*``) and the full dense model in its own (``ratio_*_full``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", help="the distilled student's Hugging Face folder")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_kd_eval_halves.json"))
    p.add_argument("--dense-from", default=None, metavar="FILE",
                   help="take the dense model's figures from an earlier results file of the same windows and seqlen "
                        "(the dense forward is the same every time) instead of scoring it again")
    args = p.parse_args()
    reused = None
    if args.dense_from:
        reused = json.loads(Path(args.dense_from).read_text())
        if (reused.get("windows"), reused.get("seqlen")) != (args.windows, args.seqlen):
            raise SystemExit(f"--dense-from {args.dense_from} scored {reused.get('windows')} × {reused.get('seqlen')} "
                             f"tokens, not {args.windows} × {args.seqlen}")

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from prunekit.datasets.text import eval_windows
    from prunekit.export.gguf_vocab import kept_token_ids
    from prunekit.models.hf import load_model

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).eval()
    windows = eval_windows(lm.tokenizer, "pydocs", args.windows, args.seqlen, default=True, say=lambda t: None)
    half = args.seqlen // 2 - 1  # predictions of tokens seqlen/2 … seqlen-1
    out: dict = {"windows": args.windows, "seqlen": args.seqlen, "student_folder": args.student}
    if reused is not None:
        out["dense"], out["dense_from"] = reused["dense"], args.dense_from
    scored = [("dense", lm.model.eval(), windows), ("student", student, windows)]
    kept = kept_token_ids(args.student)
    if kept is not None:  # distilled in a cut vocabulary: its own windows, and the dense model cut alike
        import copy

        from transformers import AutoTokenizer

        from prunekit.shrink.vocab import config_token_ids, corpus_texts, plan_vocab, trim_vocab_

        plan = plan_vocab(lm.tokenizer, corpus_texts("pydocs"), keep_ids=config_token_ids(lm.model.config))
        if plan.kept.tolist() != kept:
            raise SystemExit(f"{args.student} kept {len(kept)} token ids, not the {len(plan.kept)} of pydocs' "
                             "calibration split: cut the dense model with its own plan")
        cut = copy.deepcopy(lm.model).eval()
        trim_vocab_(cut, lm.tokenizer, plan=plan)
        own = eval_windows(AutoTokenizer.from_pretrained(args.student), "pydocs", args.windows, args.seqlen,
                           default=True, say=lambda t: None)
        scored = [scored[0], ("dense_vocab", cut, own), ("student", student, own)]
    for name, model, windows in scored:
        if name == "dense" and reused is not None:
            continue
        total = {"all_tokens": [0.0, 0], "second_half": [0.0, 0]}
        with torch.no_grad():
            for i in range(0, len(windows), 4):
                batch = windows[i:i + 4]
                logits = model(input_ids=batch).logits[:, :-1].float()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                      reduction="none").view(batch.shape[0], -1)
                for key, part in (("all_tokens", nll), ("second_half", nll[:, half:])):
                    total[key][0] += part.sum().item()
                    total[key][1] += part.numel()
        out[name] = {k: math.exp(s / n) for k, (s, n) in total.items()}
    for key in ("all_tokens", "second_half"):
        out[f"ratio_{key}"] = out["student"][key] / out["dense_vocab" if kept is not None else "dense"][key]
        if kept is not None:
            out[f"ratio_{key}_full"] = out["student"][key] / out["dense"][key]
    Path(args.results).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
