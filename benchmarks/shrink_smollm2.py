"""Shrink SmolLM2-135M to at most 60% of its non-embedding parameters, distil it from the unpruned model, and
measure perplexity (held-out Python docs) and transformers generation speed (paired, interleaved, one thread).

    nice -n 10 python benchmarks/shrink_smollm2.py            # the README's figures
    nice -n 10 python benchmarks/shrink_smollm2.py --kd-steps 10 --out /tmp/s   # a quick look

It runs ``prunekit shrink`` in a child process (one thread: OMP_NUM_THREADS=1) with ``--json``, and records its
result with the command, the child's wall and CPU time, and the machine's load in
``benchmarks/results/shrink_smollm2.json``. The distillation writes checkpoints to ``--checkpoint`` so a run
that is killed can be continued with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="params=0.6")
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--kd-batch", type=int, default=2)
    p.add_argument("--kd-seqlen", type=int, default=128)
    p.add_argument("--kd-lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="/tmp/shrink-smollm2-ckpt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default="/tmp/shrink-smollm2")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shrink_smollm2.json"))
    args = p.parse_args()
    cmd = ["prunekit", "shrink", "--model", "smollm2-135m", "--target", args.target, "--candidates",
           str(args.candidates), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--eval-windows",
           str(args.eval_windows), "--seed", str(args.seed), "--kd-steps", str(args.kd_steps), "--kd-batch",
           str(args.kd_batch), "--kd-seqlen", str(args.kd_seqlen), "--kd-lr", str(args.kd_lr), "--checkpoint",
           args.checkpoint, "--checkpoint-every", "20", "--out", args.out, "--overwrite", "--json"]
    if args.resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    code = "import sys; from prunekit.cli import main; sys.exit(main(sys.argv[1:]))"
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *cmd[1:]], env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"prunekit shrink failed with exit code {done.returncode}")
    result = json.loads(done.stdout)
    record = {"command": " ".join(cmd), "threads": 1, "wall_seconds": wall,
              "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024,
              "load_before": load_before, "load_after": os.getloadavg(), "cores": os.cpu_count(), "result": result}
    Path(args.results).write_text(json.dumps(record, indent=2, default=str) + "\n")
    ppl = result["perplexity"]
    print(f"non-embedding kept {result['shrink']['non_embedding_kept']:.1%}; perplexity {ppl}; "
          f"generation speed-up {result.get('generation', {}).get('speedup')}; wall {wall:.0f} s, "
          f"CPU {record['cpu_seconds']:.0f} s")


if __name__ == "__main__":
    main()
