"""SmolLM2-135M, pruned (magnitude 50%), saved as fp32 safetensors, read by transformers 4.x in another
venv: logits against this environment's in-memory model, with the 4.x config names prunekit writes and
without them (what prunekit wrote before). Needs a transformers 4.x python (``make venv-tf4``).

    python benchmarks/readers_smollm2.py --tf4 .venv-tf4/bin/python
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf4", required=True, help="python of a transformers 4.x environment")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import prunekit as pk
    from prunekit.datasets.text import eval_windows
    from prunekit.export import export
    from prunekit.export.interop import logits_in
    from prunekit.export.readback import reference_logits
    from prunekit.models.hf import load_model

    lm = load_model("smollm2-135m")
    pk.prune_(lm.model, method="magnitude", sparsity=0.5)
    pk.finalize_(lm.model)
    ids = torch.as_tensor(eval_windows(lm.tokenizer, "pydocs", args.windows, args.seqlen, default=True,
                                       say=lambda *_: None))[: args.windows]
    expected = reference_logits(lm.model, ids)
    with tempfile.TemporaryDirectory() as tmp:
        report = export(lm.model, lm.tokenizer, f"{tmp}/m", to="safetensors", dtype="float32")
        print("read back here:", report.detail["read_back"])
        got, versions = logits_in(args.tf4, f"{tmp}/m", ids)
        print(f"{versions}: with the 4.x names, max |Δ logit| {(got - expected).abs().max().item():.3g}")
        path = f"{tmp}/m/config.json"
        config = json.loads(open(path).read())
        for key in ("rope_theta", "rope_scaling", "torch_dtype"):
            config.pop(key)
        open(path, "w").write(json.dumps(config))
        got, _ = logits_in(args.tf4, f"{tmp}/m", ids)
        print(f"without them (as before): max |Δ logit| {(got - expected).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
