import pytest
import torch
from torch import nn

from prunekit.calibrate import FAMILIES, as_batches, capture_inputs, family_of, find_blocks, walk_blocks_
from prunekit.calibrate.blockwise import run_block
from prunekit.models.hf import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_find_blocks_for_every_family(family):
    model = tiny_model(family)
    name, blocks = find_blocks(model)
    assert family_of(model) == family
    assert len(blocks) == 2
    assert name.split(".")[-1] in ("layers", "h", "layer")


def test_unsupported_family_is_named_with_the_supported_ones():
    import transformers as tf

    model = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"cannot walk model family 't5'.*supported: bert, gpt2, llama"):
        find_blocks(model)


def test_plain_module_has_no_family():
    with pytest.raises(ValueError, match="None"):
        family_of(nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bert"])
def test_each_block_sees_the_hidden_states_the_full_forward_computes(family):
    """With no pruning, block i's inputs in the walk equal the model's own hidden_states[i]."""
    model = tiny_model(family)
    ids = torch.randint(0, 128, (6, 12))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    seen = {}

    def visit(i, name, block, inputs):
        seen[i] = torch.cat([s.hidden for s in inputs])

    assert walk_blocks_(model, ids, visit, batch_size=4, progress=False) == 2
    for i in range(2):
        torch.testing.assert_close(seen[i], ref[i], rtol=1e-5, atol=1e-5)


def test_capture_stops_before_the_first_block_and_keeps_batches():
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    calls = []
    blocks[1].register_forward_hook(lambda *a: calls.append(1))
    states = capture_inputs(model, blocks, as_batches(torch.randint(0, 128, (5, 7)), 2))
    assert [s.hidden.shape for s in states] == [(2, 7, 64), (2, 7, 64), (1, 7, 64)]
    assert calls == []
    out = run_block(blocks[0], states[0])
    assert out.shape == (2, 7, 64)


@pytest.mark.parametrize("bad", [torch.zeros(4, 8), torch.zeros(8, dtype=torch.long), "text", []])
def test_calibration_must_be_token_ids(bad):
    with pytest.raises(ValueError, match="calibration must be"):
        as_batches(bad, 2)


def test_as_batches_splits_rows():
    batches = as_batches(torch.arange(20).reshape(5, 4), 2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert set(FAMILIES) == {"llama", "mistral", "qwen2", "gpt2", "opt", "bert"}
