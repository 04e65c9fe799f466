"""The block finder and the block-by-block engine on every supported family (tiny random configs)."""

import pytest
import torch
from torch import nn

from prunekit.calibrate import calibration_batches, capture_inputs, find_blocks, run_block, walk_blocks_
from prunekit.models.tiny import FAMILIES, tiny_model

from tests.tolerances import tol

BLOCK_LISTS = {"gpt2": "transformer.h", "falcon": "transformer.h", "gpt_neox": "gpt_neox.layers",
               "opt": "model.decoder.layers", "bert": "encoder.layer"}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_are_found_without_a_family_list(family):
    model = tiny_model(family, layers=3)
    blocks = find_blocks(model)
    assert blocks.name == BLOCK_LISTS.get(family, "model.layers")
    assert len(blocks.modules) == 3 and type(blocks.modules[0]).__name__ in model._no_split_modules
    name, modules = blocks  # unpacks as (name, ModuleList), as the old finder returned
    assert blocks.contains(f"{blocks.name}.2.mlp") and not blocks.contains(f"{blocks.name}x.2")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_block_sees_the_hidden_states_the_full_forward_computes(family):
    """With no pruning, block i's inputs in the walk equal the model's own hidden_states[i]; three blocks, so
    Gemma 2/3's sliding (0, 2) and global (1) layers each run with the mask the model built for them."""
    model = tiny_model(family, layers=3)
    ids = torch.randint(0, 128, (6, 12))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    seen = {}

    def visit(i, name, block, inputs):
        seen[i] = torch.cat([s.hidden for s in inputs])

    assert walk_blocks_(model, ids, visit, batch_size=4, progress=False) == 3
    # batches of 4 against one of 6: other kernels, so each of the 3 blocks' sums (hidden 64, MLP 128, 12
    # tokens, about 350 terms a block) may come in another order
    for i in range(3):
        torch.testing.assert_close(seen[i], ref[i], **tol(torch.float32, k=3 * 350))


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_and_global_layers_get_their_own_masks(family):
    """Reusing block 0's (sliding-window) arguments for block 1 (global) would change block 2's inputs."""
    model = tiny_model(family, layers=3)
    batches = calibration_batches(torch.randint(0, 128, (2, 12)), 2, tokens=True)
    calls = capture_inputs(model, find_blocks(model), batches)[0]
    blocks = find_blocks(model).modules
    with torch.no_grad():
        h1 = run_block(blocks[0], calls[0])
        right = run_block(blocks[1], type(calls[1])(h1, calls[1].args, calls[1].kwargs))
        wrong = run_block(blocks[1], type(calls[1])(h1, calls[0].args, calls[0].kwargs))
    assert (right - wrong).abs().max() > 1e-3


def test_capture_stops_before_the_lm_head_and_keeps_batches():
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    heads = []
    model.lm_head.register_forward_hook(lambda *a: heads.append(1))
    calls = capture_inputs(model, blocks, calibration_batches(torch.randint(0, 128, (5, 7)), 2, tokens=True))
    assert [c[0].hidden.shape for c in calls] == [(2, 7, 64), (2, 7, 64), (1, 7, 64)]
    assert heads == [] and all(len(c) == 2 for c in calls)
    assert "forward" not in blocks[0].__dict__  # the recorders are gone
    assert run_block(blocks[0], calls[0][0]).shape == (2, 7, 64)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.lin(x)


class _Custom(nn.Module):
    """Not a Hugging Face model: an embedding, a list of identical blocks and experts nested inside one."""

    def __init__(self, scale_between=False):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.stack = nn.ModuleList([_Block() for _ in range(2)])
        self.stack[0].experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(5)])  # longer, but nested
        self.scale_between = scale_between

    def forward(self, input_ids):
        h = self.emb(input_ids)
        for i, b in enumerate(self.stack):
            h = b(h) * (2.0 if self.scale_between and i == 0 else 1.0)
        return h


def test_a_custom_model_is_walked_through_its_list_of_identical_blocks():
    model = _Custom()
    assert find_blocks(model).name == "stack"
    ids = torch.randint(0, 16, (3, 5))
    seen = []
    walk_blocks_(model, ids, lambda i, n, b, inputs: seen.append(inputs[0].hidden.clone()), progress=False)
    torch.testing.assert_close(seen[1], model.stack[0](model.emb(ids)))


def test_a_model_that_changes_hidden_states_between_blocks_is_refused():
    with pytest.raises(ValueError, match="changes its hidden states between block 0 and block 1"):
        walk_blocks_(_Custom(scale_between=True), torch.randint(0, 16, (2, 5)), lambda *a: None, progress=False)


def test_no_blocks_names_what_was_looked_for():
    class NoList(nn.Module):
        _no_split_modules = ["FancyBlock"]

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"looked for an nn.ModuleList of its _no_split_modules \(FancyBlock\)"):
        find_blocks(NoList())
    with pytest.raises(ValueError, match="found no transformer blocks in Linear"):
        find_blocks(nn.Linear(2, 2))
