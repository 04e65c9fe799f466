"""Memory one SparseGPT block adds in the one-pass engine: SmolLM2-135M cut to its first 2 blocks, pruned
50% with 32 × 512 calibration windows of issue 26's split (seed 0), one thread; prints the process's
resident memory before and at its peak while pruning.

    PYTHONPATH=src python benchmarks/onepass_memory_probe.py layer     # or: block
"""
import sys, time, json, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
import llm_vs_peers as b
import prunekit as pk
from prunekit.models.hf import load_model
lm = load_model("smollm2-135m"); model, tok = lm.model, lm.tokenizer
c, _ = b.tenth_split()
calib = b.windows_of(tok, c, 32, 512, seed=0)
model.model.layers = model.model.layers[:2]; model.config.num_hidden_layers = 2
import gc; gc.collect()
with b.PeakRSS() as mem:
    t = time.process_time()
    pk.prune_(model, "sparsegpt", 0.5, calibration=calib, progress=False, sequential=sys.argv[1])
    cpu = time.process_time() - t
print(json.dumps({"src": pk.__file__, "seq": sys.argv[1], "start_mb": mem.start / 1e6, "peak_mb": mem.peak / 1e6,
                  "added_mb": (mem.peak - mem.start) / 1e6, "cpu_s": cpu}))
