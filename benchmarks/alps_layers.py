"""Layer-wise reconstruction error ‖X(W0−W)‖²/‖XW0‖² of SparseGPT vs ALPS (60 ADMM iterations) on real
SmolLM2-135M layers of blocks 0 and 15 (dense inputs, 8 × 512 calibration tokens), at 70% and 2:4.

    python benchmarks/alps_layers.py [model] [out.json]
"""
import json
import sys
import time

import torch
torch.set_num_threads(1)
from prunekit.models.hf import load_model
from prunekit.datasets.text import calibration_windows
from prunekit.calibrate import InputStats, find_blocks
from prunekit.calibrate import calibration_batches
from prunekit.calibrate.blockwise import capture_inputs, run_block
from prunekit.methods.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from prunekit.methods.alps import alps_prune
lm = load_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")  # or a saved HF copy of it
calib = calibration_windows(lm.tokenizer, "pydocs", 8, 512, seed=0)
blocks = find_blocks(lm.model).modules
# block 0's inputs; each block's outputs (dense) become the next block's inputs below
states = [c[0] for c in capture_inputs(lm.model, blocks, calibration_batches(calib, 8, tokens=True))]
res = []
with torch.no_grad():
    for i, block in enumerate(blocks):
        if i in (0, 15):
            mods = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
            st = InputStats(mods, hessian=True)
            with st:
                for s in states:
                    st.new_call(); run_block(block, s)
            for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
                w = mods[name].weight.detach().float(); h = st.gram(name).double()
                def err(w2):
                    d = (w - w2).double()
                    return float(torch.einsum("oi,ij,oj->", d, h, d) / torch.einsum("oi,ij,oj->", w.double(), h, w.double()))
                for sp, n, m in ((0.7, 0, 0), (0.5, 2, 4)):
                    hinv, dead = inverse_hessian_factor(h.float(), 0.01)
                    t = time.process_time(); ws, _ = sparsegpt_prune(w, hinv, dead, sp, n, m); ts = time.process_time() - t
                    t = time.process_time(); wa, _ = alps_prune(w, h.float(), sp, n, m, max_iter=60, switch_iter=15); ta = time.process_time() - t
                    r = {"block": i, "layer": name, "pattern": "2:4" if m else f"{sp:.0%}", "sparsegpt": err(ws), "alps": err(wa), "cpu_sgpt": ts, "cpu_alps": ta}
                    res.append(r); print(r, flush=True)
        if i == 15: break
        for s in states:
            s.hidden = run_block(block, s)
if len(sys.argv) > 2:
    json.dump(res, open(sys.argv[2], "w"), indent=1)
