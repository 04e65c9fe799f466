"""Check a saved folder against another Python environment's transformers (e.g. one with
compressed-tensors ≤ 0.14, the last releases that read the sparse layouts): load it there, run the
same token ids, and compare the logits with this process's model.

    from prunekit.export.interop import logits_in
    theirs = logits_in("/opt/ct014/bin/python", "pruned/", ids)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

_CHILD = """
import json, sys, types
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
import torch, transformers
from transformers import AutoModelForCausalLM
try:
    import compressed_tensors
    ct = compressed_tensors.__version__
except ImportError:
    ct = None
folder, ids_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto") if int(transformers.__version__.split(".")[0]) >= 5 \\
    else AutoModelForCausalLM.from_pretrained(folder, torch_dtype="auto")
for p in model.parameters():
    p.data = p.data.float()
with torch.no_grad():
    logits = model(torch.load(ids_path)).logits
torch.save(logits, out_path)
print("VERSIONS " + json.dumps({"transformers": transformers.__version__, "compressed_tensors": ct}))
"""


def logits_in(python: str | os.PathLike, folder: str | os.PathLike, ids: Tensor,
              timeout: float = 1800) -> tuple[Tensor, dict[str, str | None]]:
    """Logits of ``ids`` from ``folder`` loaded by ``AutoModelForCausalLM.from_pretrained`` in the Python
    ``python`` (weights in their stored dtype, then upcast to float32), and that environment's versions.
    Raises a RuntimeError with the child's last lines when loading fails there."""
    with tempfile.TemporaryDirectory(prefix="prunekit-interop-") as tmp:
        ids_path, out_path = Path(tmp) / "ids.pt", Path(tmp) / "logits.pt"
        torch.save(ids, ids_path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([str(python), "-c", _CHILD, str(folder), str(ids_path), str(out_path)],
                              capture_output=True, text=True, env=env, timeout=timeout)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("VERSIONS ")), None)
        if proc.returncode != 0 or line is None:
            tail = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()][-2:]
            raise RuntimeError(f"{python} could not load {folder}: {' | '.join(tail)}")
        return torch.load(out_path), json.loads(line[len("VERSIONS "):])
