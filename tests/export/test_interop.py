"""The compressed folders against the readers that read these layouts (compressed-tensors ≤ 0.14 with
transformers 4.x). Set PRUNEKIT_CT_PYTHON to such an environment's python (docs/export.md says how to
make one); the current releases (compressed-tensors 0.20, transformers 5) no longer read them."""

import os

import pytest
import torch

from prunekit.export.dtype import SaveDtype
from prunekit.export.interop import logits_in
from prunekit.export.save import save_model

from .conftest import logits, make_llama, pruned, rounded

from tests.tolerances import tol

REF = os.environ.get("PRUNEKIT_CT_PYTHON")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REF, reason="set PRUNEKIT_CT_PYTHON to a python with compressed-tensors<=0.14")]


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_compressed_tensors_reads_our_folders_with_identical_logits(tokenizer, tmp_path, pattern):
    model = pruned(make_llama(len(tokenizer)), pattern)
    save_model(model, tokenizer, tmp_path / "m", "compressed", SaveDtype(torch.bfloat16, "test"))
    ids = torch.randint(0, len(tokenizer), (2, 12))
    theirs, versions = logits_in(REF, tmp_path / "m", ids)
    assert versions["compressed_tensors"] is not None
    # the same weights, but another environment (its torch, its transformers, its threads) may sum in another
    # order: 2 layers of q/k/v (64), scores (16), values (12 tokens), o (64), MLP (64 + 128), then the head (64)
    torch.testing.assert_close(theirs, logits(rounded(model), ids),
                               **tol(torch.float32, k=2 * (64 + 16 + 12 + 64 + 64 + 128) + 64))
