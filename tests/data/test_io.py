import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prunekit.data import load_array, save_array


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_round_trip(tmp_path, suffix):
    a = np.array([0.5, -1.25, 3.0])
    path = save_array(tmp_path / f"s{suffix}", a, column="score")
    np.testing.assert_array_equal(load_array(path), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s{suffix}"]  # no temporary left behind


def test_parquet_column_choice(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"score": [1.0, 2.0], "label": [0, 1]}), path)
    with pytest.raises(ValueError, match="name the one to read"):
        load_array(path)
    assert load_array(path, "label").tolist() == [0, 1]
    with pytest.raises(ValueError, match="no column 'x'"):
        load_array(path, "x")


def test_bad_paths_and_arrays_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=".npy or .parquet"):
        save_array(tmp_path / "s.csv", np.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        save_array(tmp_path / "s.npy", np.ones((2, 2)))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        save_array(tmp_path / "missing" / "s.npy", np.ones(3))
    with pytest.raises(FileNotFoundError):
        load_array(tmp_path / "absent.npy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_saved_arrays_follow_the_umask(tmp_path, suffix):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_array(tmp_path / f"s{suffix}", np.ones(3))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a bare mkstemp leaves 0600


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_overwrite_replaces_only_an_array_file(tmp_path, suffix):
    from prunekit.data.io import check_output_file

    mine = tmp_path / f"notes{suffix}"
    mine.write_text("my notes, not an array")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        check_output_file(mine)
    with pytest.raises(ValueError, match=f"is not a {suffix} file .* never replaced, even with --overwrite"):
        check_output_file(mine, overwrite=True)
    assert mine.read_text() == "my notes, not an array"
    arrays = save_array(tmp_path / f"a{suffix}", np.ones(3))
    assert check_output_file(arrays, overwrite=True) == arrays
