"""Where LoRAPrune's memory goes: the peak resident memory of a few steps of LoRAPrune against the same LoRA
fine-tune of the unpruned, unmasked SmolLM2-135M (``recover_lm_``, mode ``lora``), each in its own process.

    python benchmarks/loraprune_memory_probe.py            # both, one after the other, each in a fresh process

Both train rank-8 adapters plus biases and norms on 2 × 128-token batches for ``--steps`` steps (fp32, one
thread); the difference is what LoRAPrune's masks (parametrizations shared with the adapters) and its scoring add.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(kind: str, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    from prunekit.datasets.text import calibration_windows
    from prunekit.models.hf import load_model
    from prunekit.train.loraprune import loraprune_
    from prunekit.train.recovery_lm import recover_lm_, training_windows

    lm = load_model("smollm2-135m")
    model = lm.model.float()
    ids = training_windows(calibration_windows(lm.tokenizer, "pydocs", 8, 256, 0), 128)
    loaded = peak_mb()
    if kind == "lora-finetune":
        recover_lm_(model, ids, recover="lora", steps=steps, batch_size=2, progress=False)
    else:
        loraprune_(model, ids, sparsity=0.5, steps=steps, batch_size=2, prune_every=2, criterion=kind, progress=False)
    print(f"{kind}: peak {peak_mb():,.0f} MB (after loading {loaded:,.0f} MB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    for kind in ("lora-finetune", "lora", "gradient"):
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", kind], check=True)


if __name__ == "__main__":
    main()
