"""The uniform search's grid: widths that fill llama.cpp's quantization blocks where the config allows."""

from transformers import LlamaConfig

from prunekit.shrink.budget import Shape
from prunekit.shrink.perlayer import ffn_options
from prunekit.shrink.search import QUANT_BLOCK, _Widths, round_width, width_options


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
