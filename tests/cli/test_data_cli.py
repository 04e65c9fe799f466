import argparse
import json

import numpy as np
import pytest

from prunekit.cli import data as data_cli


def run(argv):
    parser = argparse.ArgumentParser(prog="prunekit")
    data_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_score_then_select_through_files(tmp_path, capsys):
    scores = tmp_path / "el2n.parquet"
    run(["data", "score", "--data", "digits", "--limit", "400", "--method", "el2n", "--epochs", "1",
         "--out", str(scores), "--quiet"])
    from prunekit.data import load_array

    s = load_array(scores)
    assert s.shape == (400,) and np.isfinite(s).all() and s.std() > 0
    capsys.readouterr()
    keep = tmp_path / "keep.npy"
    run(["data", "select", "--scores", str(scores), "--keep", "0.25", "--strategy", "class_balanced",
         "--data", "digits", "--limit", "400", "--out", str(keep), "--json"])
    report = json.loads(capsys.readouterr().out)
    idx = np.load(keep)
    assert report["kept"] == len(idx) == 100 and np.all(np.diff(idx) > 0)


def test_density_writes_cluster_ids_that_select_uses(tmp_path):
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32))
    run(["data", "score", "--data", str(emb), "--method", "density", "--n-clusters", "4",
         "--out", str(tmp_path / "d.npy"), "--clusters-out", str(tmp_path / "c.npy"), "--quiet"])
    assert set(np.load(tmp_path / "c.npy").tolist()) == {0, 1, 2, 3}
    run(["data", "select", "--scores", str(tmp_path / "d.npy"), "--keep", "0.5", "--strategy", "density",
         "--labels", str(tmp_path / "c.npy"), "--out", str(tmp_path / "k.npy"), "--quiet"])
    assert len(np.load(tmp_path / "k.npy")) == 60


@pytest.mark.parametrize("argv, message", [
    (["--keep", "1.5"], r"keep must be a number in \(0, 1\]"),
    (["--keep", "0"], r"keep must be a number in \(0, 1\]"),
    (["--keep", "0.5", "--strategy", "class_balanced"], "needs labels="),
    (["--keep", "0.5", "--labels", "LABELS"], "describe the same examples"),
])
def test_bad_select_input_raises_and_writes_nothing(tmp_path, argv, message):
    scores = tmp_path / "s.npy"
    np.save(scores, np.arange(10, dtype=float))
    np.save(tmp_path / "labels.npy", np.zeros(7, dtype=int))
    argv = [a.replace("LABELS", str(tmp_path / "labels.npy")) for a in argv]
    out = tmp_path / "keep.npy"
    with pytest.raises(ValueError, match=message):
        run(["data", "select", "--scores", str(scores), "--out", str(out), *argv])
    assert not out.exists()


def test_nan_scores_and_bad_outputs_write_nothing(tmp_path):
    scores = tmp_path / "s.npy"
    np.save(scores, np.array([1.0, np.nan, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        run(["data", "select", "--scores", str(scores), "--keep", "0.5", "--out", str(tmp_path / "k.npy")])
    with pytest.raises(ValueError, match=".npy or .parquet"):
        run(["data", "score", "--data", "digits", "--out", str(tmp_path / "s.csv")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_bench_prints_a_table(capsys):
    run(["data", "bench", "--data", "digits", "--limit", "500", "--test-limit", "200", "--fractions", "0.5",
         "--methods", "random", "rs2", "--epochs", "2", "--quiet"])
    out = capsys.readouterr().out
    assert "| random |" in out and "| rs2 |" in out and "full data" in out


def test_outputs_that_share_a_path_or_replace_an_input_are_refused(tmp_path):
    from prunekit.infra.atomic import OutputError

    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    same = tmp_path / "d.npy"
    with pytest.raises(OutputError, match="--out and --clusters-out are the same path"):
        run(["data", "score", "--data", str(emb), "--method", "density", "--n-clusters", "4",
             "--out", str(same), "--clusters-out", str(same), "--quiet"])
    with pytest.raises(OutputError, match="is the input --data"):
        run(["data", "score", "--data", str(emb), "--method", "prototypes", "--n-clusters", "4",
             "--out", str(emb), "--overwrite", "--quiet"])
    scores = tmp_path / "s.npy"
    np.save(scores, np.arange(10, dtype=float))
    with pytest.raises(OutputError, match="is the input --scores"):
        run(["data", "select", "--scores", str(scores), "--keep", "0.5", "--out", str(scores), "--overwrite"])
    assert np.array_equal(np.load(scores), np.arange(10, dtype=float))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "s.npy"]
