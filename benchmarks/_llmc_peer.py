"""Run llm-compressor's ``oneshot`` (SparseGPT or Wanda) on a saved model and calibration windows.

Executed by ``llm_vs_peers.py`` with the Python of llm-compressor's own virtual environment (its
pins clash with prunekit's transformers). Prints one JSON line: wall and CPU seconds, peak RSS.
"""

import argparse
import json
import threading
import time

import psutil
import torch


class PeakRSS:
    """Peak resident memory while active. On Linux, exact: the kernel's high-water mark (``VmHWM``), reset to the
    current resident size on entry (``/proc/self/clear_refs``), read on exit. Elsewhere, and beside it as
    ``sampled``: the highest of samples every 50 ms, which misses spikes shorter than that. ``start`` is the
    resident memory on entry."""

    def __init__(self):
        self.peak = self.sampled = self.start = psutil.Process().memory_info().rss
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.sampled = max(self.sampled, proc.memory_info().rss)
            time.sleep(0.05)

    @staticmethod
    def _hwm():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = self._hwm() is not None
        except OSError:
            self.exact = False
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        hwm = self._hwm() if self.exact else None
        self.peak = max(self.sampled, hwm) if hwm is not None else self.sampled


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True, help="a .pt file of token ids (nsamples, seqlen)")
    p.add_argument("--method", choices=["sparsegpt", "wanda"], required=True)
    p.add_argument("--pattern", default="0:0")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--out", required=True, help="where to torch.save the pruned state dict")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.load(a.calib)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    cls = SparseGPTModifier if a.method == "sparsegpt" else WandaPruningModifier
    recipe = cls(sparsity=a.sparsity, mask_structure=a.pattern, targets=["Linear"], ignore=["re:.*lm_head"])
    with PeakRSS() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        oneshot(model=model, processor=AutoTokenizer.from_pretrained(a.model), dataset=ds, recipe=recipe, num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, a.out)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": mem.peak, "start_rss": mem.start,
                      "peak_rss_sampled": mem.sampled, "peak_exact": mem.exact}))


if __name__ == "__main__":
    main()
