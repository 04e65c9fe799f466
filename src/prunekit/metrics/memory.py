"""Peak memory of loading a model (and, with the default loader, running one forward pass, so that
memory-mapped weights are resident), measured in a fresh process (so nothing already loaded counts).

The child imports torch, transformers and the loader, records its resident set size, resets the
kernel's high-water mark (Linux ``/proc/self/clear_refs``), calls the loader and reads the peak
resident set size of the load (``VmHWM``): ``added_bytes`` is what loading took above the imports.
Elsewhere the process's ``ru_maxrss`` before and after is used, which can hide a load smaller than
the imports' own peak.
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
for name in sys.argv[3].split(","):
    if name:
        importlib.import_module(name)


def status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


module, name = sys.argv[1].split(":")
load = getattr(importlib.import_module(module), name)
before = status("VmRSS")
reset = False
try:  # Linux: reset the high-water mark to the current RSS, so the peak is that of the load alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loaded = load(sys.argv[2])
after = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("PEAK " + json.dumps([before, after]))
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


DEFAULT_PRELOAD = ("torch", "transformers", "transformers.modeling_utils", "prunekit.export.load")


def peak_load_memory(spec: str, loader: str = "prunekit.export.load:load_and_run",
                     preload: tuple[str, ...] = DEFAULT_PRELOAD, timeout: float = 1800) -> LoadMemory:
    """Load ``spec`` with ``loader`` (``"module:function"``) in a fresh Python and return its peak memory;
    the modules in ``preload`` are imported before the baseline is taken (their memory is not the model's)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PROBE, loader, str(spec), ",".join(preload)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PEAK ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"loading {spec} in a fresh process failed: {' | '.join(tail)}")
    before, after = json.loads(line[5:])
    return LoadMemory(int(before), int(after))
