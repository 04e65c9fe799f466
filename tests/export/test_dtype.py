import json

import pytest
import torch

from prunekit.export.dtype import parse_dtype, resolve_dtype, source_dtype


def _folder(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config, dtype", [
    ({"dtype": "bfloat16"}, torch.bfloat16),
    ({"torch_dtype": "float16"}, torch.float16),
    ({"dtype": "float32"}, torch.float32),
    ({}, torch.float32),
    ({"dtype": "int8"}, torch.float32),
])
def test_a_folder_keeps_the_dtype_its_config_names(tmp_path, config, dtype):
    d = source_dtype(_folder(tmp_path, **config))
    assert d.dtype == dtype and d.reason


def test_a_gguf_source_is_saved_as_bfloat16_and_the_user_can_say_otherwise(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert source_dtype(gguf).dtype == torch.bfloat16
    assert "GGUF" in source_dtype(gguf).reason
    assert resolve_dtype("auto", gguf).dtype == torch.bfloat16
    assert resolve_dtype("fp16", gguf).dtype == torch.float16
    assert resolve_dtype("float32", gguf).reason == "--dtype float32 as asked"
    assert resolve_dtype(None, None).dtype == torch.float32


def test_unknown_dtypes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected auto, float32, bfloat16, float16"):
        parse_dtype("int4")
    assert parse_dtype("BF16") == torch.bfloat16
