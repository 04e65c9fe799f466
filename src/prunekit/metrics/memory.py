"""Peak memory of loading a model, measured in a fresh process (so nothing already loaded counts).

The child imports torch, transformers and the loader, records its peak resident set size, calls the
loader, and records it again: ``added_bytes`` is what loading added to the high-water mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

_PROBE = """
import importlib, json, resource, sys
import prunekit  # first: its import-time fixes let transformers load
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
module, name = sys.argv[1].split(":")
load = getattr(importlib.import_module(module), name)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = load(sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK " + json.dumps([before * 1024, after * 1024]))
"""


@dataclass
class LoadMemory:
    """Peak RSS of the loading process, before and after the load, in bytes."""

    baseline_bytes: int
    peak_bytes: int

    @property
    def added_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "added_bytes": self.added_bytes}


def peak_load_memory(spec: str, loader: str = "prunekit.export.load:load_artifact", timeout: float = 1800) -> LoadMemory:
    """Load ``spec`` with ``loader`` (``"module:function"``) in a fresh Python and return its peak memory."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PROBE, loader, str(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PEAK ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"loading {spec} in a fresh process failed: {' | '.join(tail)}")
    before, after = json.loads(line[5:])
    return LoadMemory(int(before), int(after))
