"""The uniform search's grid: widths that fill llama.cpp's quantization blocks where the config allows."""

import pytest
from transformers import LlamaConfig

from prunekit.shrink.budget import Shape
from prunekit.shrink.perlayer import ffn_options, kv_options
from prunekit.shrink.search import (
    QUANT_BLOCK, _Widths, head_options, is_k_quant, resolve_width_multiple, round_width, unaligned, width_options,
)


def test_real_sized_widths_are_multiples_of_the_quant_block():
    # SmolLM2's hidden 576 and MLP 1536: 87.5% would be 504 and 1344 on a multiple-of-8 grid; 504 is not a
    # multiple of 32, and a q8_0 GGUF stores every tensor reading it as F16
    assert width_options(576) == [576, 480, 416, 352, 288, 192]
    assert all(w % QUANT_BLOCK == 0 for w in width_options(1536) + ffn_options(1536))
    assert round_width(503, 576) == 480 and round_width(40, 576) == 32


def test_small_widths_keep_the_multiple_of_8_grid():
    # a 32-step on a 64-wide test model would leave two sizes; below 256 the grid rounds to 8 as before
    assert width_options(64) == [64, 56, 48, 40, 32, 24]
    assert width_options(200) == [200, 168, 144, 120, 96, 72]  # 200 is no multiple of 32: steps of 8
    assert width_options(7) == [7, 6, 5, 4, 3, 2]  # nor of 8: exact sizes
    assert round_width(20, 576) == 16  # under one block: the finer step


def _llama_widths():
    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                      intermediate_size=1536, num_hidden_layers=2)
    return _Widths(cfg, Shape(576, 9, 3, 64, 1536, 2))


def test_a_width_the_config_refuses_on_the_block_grid_falls_back_to_a_finer_step():
    widths = _llama_widths()
    # 9 query heads: Llama's config wants hidden % 9 == 0, which no multiple of 32 under 576 meets until 288
    assert widths.options(9, 3, True) == [576, 504, 432, 360, 288, 216]
    # 6 query heads (two kv groups): multiples of 32 that 6 divides exist, and they are chosen
    six = widths.options(6, 2, True)
    assert six[:2] == [576, 480] and all(w % 6 == 0 for w in six)
    assert sum(w % QUANT_BLOCK == 0 for w in six) >= 4


def test_k_quant_widths_are_strict_multiples_of_256():
    # SmolLM2's MLP 1536 = 6 × 256: the grid's 87.5 … 37.5% round down to multiples of 256
    assert width_options(1536, 256) == [1536, 1280, 1024, 768, 512]
    # hidden 576 is no multiple of 256: 512 (the largest under it) is offered beside the dense size and 256
    assert width_options(576, 256) == [576, 512, 256]
    # a width under one super-block has nothing to offer but itself (never a finer step)
    assert width_options(64, 256) == [64] and round_width(200, 1536, 256) == 0
    # the per-layer grid goes down to 25%: 384 of 1536 rounds down to 256
    assert ffn_options(1536, 256) == [1536, 1280, 1024, 768, 512, 256]
    assert ffn_options(2048, 256) == [2048, 1792, 1536, 1280, 1024, 768, 512]


def test_heads_are_kept_where_their_o_proj_row_is_a_multiple():
    # o_proj reads heads × head_dim: 16 heads of 64 in 4 groups → 1024, 768, 512 are all multiples of 256
    wide = Shape(1024, 16, 4, 64, 2048, 2)
    assert head_options(wide, 256) == [(16, 4), (12, 3), (8, 2)] == head_options(wide)
    # SmolLM2: 9 heads in 3 groups → 576, 384, 192: no cut fills 256-wide blocks, the dense count stays alone
    assert head_options(Shape(576, 9, 3, 64, 1536, 2), 256) == [(9, 3)]
    assert kv_options(3, 256, 3 * 64) == [3] and kv_options(4, 256, 4 * 64) == [4, 3, 2, 1]
    assert kv_options(4, 256, 2 * 64) == [4, 2]


def test_smollm2_hidden_cannot_reach_a_multiple_of_256_with_its_heads():
    # Llama's config wants hidden % heads == 0: 512 and 256 are refused with 9, 6 or 3 query heads, so the
    # strict grid keeps 576 (and the report says which rows stay unfilled)
    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                      intermediate_size=1536, num_hidden_layers=2)
    widths = _Widths(cfg, Shape(576, 9, 3, 64, 1536, 2), 256)
    assert widths.options(9, 3, True) == [576]
    assert unaligned(Shape(576, 9, 3, 64, 1024, 2), 256)[0].startswith("hidden 576 is not a multiple of 256")
    assert len(unaligned(Shape(576, 9, 3, 64, 1024, 2), 256)) == 2  # hidden and o_proj's 576; MLP 1024 is fine
    assert unaligned(Shape(576, 9, 3, 64, 1000, 2), 32) == []  # the default's rule is the soft one


def test_the_width_multiple_defaults_to_256_for_k_quants_and_refuses_a_smaller_one():
    assert resolve_width_multiple(None) == 32 and resolve_width_multiple(None, ["q8_0", None]) == 32
    assert resolve_width_multiple(None, ["Q4_K_M"]) == 256 and resolve_width_multiple(None, ["q6_k"]) == 256
    assert resolve_width_multiple(512, ["q4_k_s"]) == 512 and resolve_width_multiple(64, ["q4_0"]) == 64
    with pytest.raises(ValueError, match="width_multiple 32 leaves rows that q4_k_m's 256-wide super-blocks"):
        resolve_width_multiple(32, ["q4_k_m"])
    with pytest.raises(ValueError, match="--width-multiple 128 .* use 256"):
        resolve_width_multiple(128, ["q5_K"], flag="--width-multiple")
    with pytest.raises(ValueError, match="positive integer"):
        resolve_width_multiple(0)
    assert is_k_quant("q3_K_L") and not is_k_quant("q8_0") and not is_k_quant(None)
