import argparse
import json

import numpy as np
import pytest

from prunekit.cli import data as data_cli
from prunekit.data import SubsetSampler, load_array

from ..data.web.conftest import planted, write_shards


def run(argv):
    parser = argparse.ArgumentParser(prog="prunekit")
    data_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_embed_dedup_density_through_the_command_line(tmp_path, capsys):
    x, copies, _ = planted(n=1200, d=16, dups=100)
    paths = write_shards(tmp_path / "shards", x, [500, 700])
    run(["data", "embed", "--texts", *map(str, paths), "--embedding-column", "emb", "--out", str(tmp_path / "emb"),
         "--json"])
    embedded = json.loads(capsys.readouterr().out)
    assert embedded["n"] == 1200 and embedded["written"] == 2
    run(["data", "dedup", "--emb", str(tmp_path / "emb"), "--clusters", "6", "--eps", "0.05",
         "--out", str(tmp_path / "keep-dedup.parquet"), "--pairs-out", str(tmp_path / "pairs.parquet"), "--json"])
    report = json.loads(capsys.readouterr().out)
    kept = load_array(tmp_path / "keep-dedup.parquet")
    assert report["kept"] == len(kept) and 90 <= report["removed"] <= 100
    assert sum(report["per_cluster"]["removed"]) == report["removed"] and len(report["per_cluster"]["size"]) == 6
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)
    assert sorted(SubsetSampler(kept, seed=0)) == kept.tolist()  # the samplers take it unchanged
    run(["data", "density", "--emb", str(tmp_path / "emb"), "--clusters", "6", "--keep", "0.5",
         "--subset", str(tmp_path / "keep-dedup.parquet"), "--out", str(tmp_path / "keep-dbp.npy"), "--quiet"])
    out = capsys.readouterr().out
    dbp = np.load(tmp_path / "keep-dbp.npy")
    assert f"kept {len(dbp):,} of {len(kept):,}" in out and set(dbp.tolist()) <= set(kept.tolist())
    assert len(dbp) == round(0.5 * len(kept))


@pytest.mark.parametrize("argv, flag, message", [
    (["data", "score", "--data", "digits", "--limit", "-10", "--out", "s.npy"], "--limit", "positive integer"),
    (["data", "bench", "--lr", "nan"], "--lr", "finite number > 0"),
    (["data", "bench", "--epochs", "0"], "--epochs", "positive integer"),
    (["data", "select", "--scores", "s.npy", "--keep", "0.5", "--out", "k.npy", "--temperature", "-1"],
     "--temperature", "finite number > 0"),
    (["data", "dedup", "--emb", "e", "--clusters", "0", "--eps", "0.1", "--out", "k.npy"], "--clusters",
     "positive integer"),
    (["data", "embed", "--texts", "a.parquet", "--out", "e", "--batch-size", "x"], "--batch-size", "positive integer"),
])
def test_bad_numbers_are_refused_naming_the_option(capsys, argv, flag, message):
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be a {message}" in err


def test_bad_web_inputs_are_one_clear_error(tmp_path):
    np.save(tmp_path / "emb.npy", planted(n=100, d=4, dups=0)[0])
    with pytest.raises(ValueError, match=r"eps must be a number in \(0, 1\)"):
        run(["data", "dedup", "--emb", str(tmp_path / "emb.npy"), "--clusters", "4", "--eps", "1.5",
             "--out", str(tmp_path / "k.npy")])
    with pytest.raises(ValueError, match="100 examples cannot form 200 clusters"):
        run(["data", "dedup", "--emb", str(tmp_path / "emb.npy"), "--clusters", "200", "--eps", "0.1",
             "--out", str(tmp_path / "k.npy")])
    with pytest.raises(FileNotFoundError, match="no such embedding folder"):
        run(["data", "density", "--emb", str(tmp_path / "missing"), "--clusters", "4", "--keep", "0.5",
             "--out", str(tmp_path / "k.npy")])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        run(["data", "embed", "--texts", str(tmp_path / "*.parquet"), "--out", str(tmp_path / "e")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]


def test_pairs_out_and_out_on_one_path_is_an_error(tmp_path, capsys):
    from prunekit.cli import main

    np.save(tmp_path / "emb.npy", planted(n=100, d=4, dups=0)[0])
    same = tmp_path / "x.parquet"
    rc = main(["data", "dedup", "--emb", str(tmp_path / "emb.npy"), "--clusters", "4", "--eps", "0.1",
               "--out", str(same), "--pairs-out", str(same)])
    assert rc == 2
    assert "--out and --pairs-out are the same path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]
