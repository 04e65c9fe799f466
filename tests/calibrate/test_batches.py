import pytest
import torch

from prunekit.calibrate import calibration_batches


def test_token_ids_split_into_batches():
    batches = calibration_batches(torch.arange(20).reshape(5, 4), 2, tokens=True)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    rows = calibration_batches([torch.arange(4), torch.arange(4, 8), torch.arange(8, 12)], 2, tokens=True)
    assert [b["input_ids"].tolist() for b in rows] == [[[0, 1, 2, 3], [4, 5, 6, 7]], [[8, 9, 10, 11]]]
    ragged = calibration_batches([torch.arange(3), torch.arange(5)], 8, tokens=True)
    assert [b["input_ids"].shape for b in ragged] == [(1, 3), (1, 5)]


def test_model_inputs_pass_through_when_not_tokens_only():
    pix = torch.randn(2, 3, 8, 8)
    assert calibration_batches(pix)[0] is pix
    ids = torch.randint(0, 9, (2, 4))
    assert len(calibration_batches([ids, ids[:1]])) == 2  # a list of batches stays a list of batches
    assert calibration_batches({"input_ids": ids}) == [{"input_ids": ids}]
    assert torch.equal(calibration_batches(ids)[0]["input_ids"], ids)


@pytest.mark.parametrize("bad", [torch.zeros(4, 8), torch.zeros(8, dtype=torch.long), "text", []])
def test_language_model_calibration_must_be_token_ids(bad):
    with pytest.raises(ValueError, match="calibration must be .*token ids"):
        calibration_batches(bad, 2, tokens=True)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        calibration_batches(torch.zeros(2, 2, dtype=torch.long), 0)
