"""Diffusion runs in the results store: a tiny sampled run lands in the store, and the report (HTML and
Markdown) shows its figures, averaged over seeds, with its PNG grid embedded."""

from __future__ import annotations

import base64

import pytest
import torch

from prunekit.bench.diffusion import DiffusionRun, store_diffusion_runs
from prunekit.bench.report import html_report, markdown
from prunekit.bench.store import Store
from prunekit.cli import main
from prunekit.diffusion import UNetConfig, build_unet, ddim_sample
from prunekit.diffusion.metrics import save_grid

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


def _tiny_runs(tmp_path) -> list[DiffusionRun]:
    unet = build_unet(TINY, seed=0).eval()
    runs = []
    for seed in (0, 1):
        images = ddim_sample(unet, torch.arange(10).repeat_interleave(2), steps=2, seed=seed)
        png = save_grid(images, tmp_path / f"grid-{seed}.png").read_bytes()
        runs.append(DiffusionRun("tiny DDPM", seed, {"copy_rate_memorized": 0.25 * (seed + 1), "fid_other": 10.0 + seed,
                                                      "params": sum(p.numel() for p in unet.parameters())},
                                 {f"tiny DDPM, seed {seed}": png}))
    return runs


def test_a_tiny_run_lands_in_the_store_and_the_report_embeds_its_grid(tmp_path, capsys):
    runs = _tiny_runs(tmp_path)
    db = tmp_path / "r.db"
    assert store_diffusion_runs(db, "diffusion_tiny", "tiny", {"ddim_steps": 2}, runs) == 2
    with Store(db) as s:
        stored = s.runs()
    assert [(r.task, r.label, r.config["seed"]) for r in stored] == [("diffusion", "tiny DDPM", 0),
                                                                     ("diffusion", "tiny DDPM", 1)]
    assert stored[1].figures["copy_rate_memorized"] == 0.5
    grid = base64.b64encode((tmp_path / "grid-1.png").read_bytes()).decode()
    assert stored[1].figures["grids"] == {"tiny DDPM, seed 1": grid}
    page = html_report(stored)
    assert f"src='data:image/png;base64,{grid}'" in page and "<figcaption>tiny DDPM, seed 1</figcaption>" in page
    # the two seeds are averaged: copy rate 0.25 and 0.5 -> mean 0.375, sample sd 0.1768
    assert "0.3750 ± 0.1768" in page and "averaged over 2 seeds" in page
    md = markdown(stored)
    assert "| tiny DDPM | 0, 1 | 0.3750 ± 0.1768 | 10.50 ± 0.7071 |" in md and "ddim_steps" in md
    # the CLI: `prunekit report` writes the page with the grid inside
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out), "--quiet"]) == 0
    assert grid in out.read_text()
    # a rerun replaces its rows instead of adding more
    store_diffusion_runs(db, "diffusion_tiny", "tiny", {"ddim_steps": 2}, runs)
    with Store(db) as s:
        assert len(s.runs()) == 2


@pytest.mark.parametrize("bad, match", [
    (DiffusionRun("a", 0, {"fid": 1.0}, {"grid": b"not a png"}), "is not PNG bytes"),
    (DiffusionRun("a", 0, {"fid": [1.0, 2.0]}), "must be scalars"),
    (DiffusionRun("a", 0, {"grids": 1.0}), "reserved for the image grids"),
    (DiffusionRun("", 0, {"fid": 1.0}), "needs a label"),
])
def test_bad_runs_are_refused_before_the_store_is_touched(tmp_path, bad, match):
    db = tmp_path / "r.db"
    good = DiffusionRun("ok", 0, {"fid": 1.0})
    with pytest.raises(ValueError, match=match):
        store_diffusion_runs(db, "b", "m", {}, [good, bad])
    assert not db.exists()
    with pytest.raises(ValueError, match="no runs to store"):
        store_diffusion_runs(db, "b", "m", {}, [])
