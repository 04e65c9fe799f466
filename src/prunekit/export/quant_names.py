"""The GGUF K-quant type names llama.cpp's ``llama-quantize`` writes and the ``gguf`` package cannot: one list,
read by the GGUF writer's type check (:mod:`.gguf`), llama.cpp's wrapper (:mod:`.llama_cpp`) and the K-quant
export (:mod:`.kquant`)."""

# llama-quantize's own spelling ("Q4_K" is its alias of Q4_K_M)
K_QUANT_TYPES = ("Q2_K", "Q2_K_S", "Q3_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S",
                 "Q5_K_M", "Q6_K")
K_QUANTS = tuple(t.lower() for t in K_QUANT_TYPES)  # as --quant takes them (any case)
