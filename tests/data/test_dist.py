"""Scoring under torch.distributed (gloo, 2 processes on localhost) equals scoring in one process."""

import importlib
import socket
import textwrap

import numpy as np
import torch
import torch.multiprocessing as mp

from prunekit.data.dist import block

# The spawned processes must import their entry point by name, which test modules are not under
# pytest's importlib mode, so it is written to a module of its own.
WORKER = textwrap.dedent('''
    import numpy as np
    import torch
    import torch.distributed as dist

    from prunekit.data import score
    from prunekit.datasets import load_digits
    from prunekit.models import MLP


    def data():
        d = load_digits("train")
        return torch.utils.data.TensorDataset(d.tensors[0][:600], d.tensors[1][:600])


    def model():
        return MLP(hidden=(32,))


    def both_scores():
        el2n = score(data(), "el2n", model_fn=model, epochs=1, n_models=2, batch_size=64, seed=0, progress=False)
        torch.manual_seed(1)
        proto = score(data(), "prototypes", embed_fn=torch.nn.Linear(64, 8), n_clusters=5, seed=0, progress=False)
        return el2n, proto


    def worker(rank, world_size, port, out_dir):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        try:
            el2n, proto = both_scores()
            np.save(f"{out_dir}/el2n_{rank}.npy", el2n)
            np.save(f"{out_dir}/proto_{rank}.npy", proto)
        finally:
            dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_give_the_scores_of_one(tmp_path, monkeypatch):
    (tmp_path / "pk_dist_worker.py").write_text(WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    worker = importlib.import_module("pk_dist_worker")
    mp.spawn(worker.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        el2n, proto = worker.both_scores()
    finally:
        torch.set_num_threads(threads)
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"el2n_{rank}.npy"), el2n, rtol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / f"proto_{rank}.npy"), proto, rtol=1e-5)


def test_blocks_partition_the_rows():
    for n, w in [(10, 3), (5, 4), (7, 7)]:
        spans = [block(n, r, w) for r in range(w)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] and b[1] > b[0] for a, b in zip(spans, spans[1:]))
