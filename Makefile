# meg: the two commands are `make serve` and `make test`. Everything else is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first and pinned, so a CPU-only machine takes the CPU build: where a
# local wheel exists pip uses it; elsewhere set TORCH_INDEX to PyTorch's CPU wheel index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# onnxruntime (CPU) or onnxruntime-gpu: exactly one of them, never both.
ORT_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
MODELS ?= models
HOST ?= 0.0.0.0
PORT ?= 8000
MEG_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data))
export MEG_DATA_DIR

.PHONY: install serve test lint bench train-default clean help

help:
	@echo "make serve   set up, train the default digits bundle if absent, serve on :$(PORT)"
	@echo "make test    set up and run the test suite"
	@echo "make lint    ruff and mypy"
	@echo "make bench   benchmarks (writes docs/benchmarks.md figures)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[$(ORT_EXTRA),train,dev]"
	touch $@

install: $(VENV)/.installed

$(MODELS)/digits/manifest.json: | $(VENV)/.installed
	$(VENV)/bin/meg train digits --out $(MODELS)/digits

train-default: $(MODELS)/digits/manifest.json

serve: install train-default
	$(VENV)/bin/meg serve --models $(MODELS) --host $(HOST) --port $(PORT)

test: install
	bash deploy/install-tools.sh
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy meg service training

bench: install train-default
	$(PIP) install -q -e ".[$(ORT_EXTRA),train,bench]"
	-command -v wrk >/dev/null || apt-get install -y -q wrk  # load generator for bench/serve.py
	$(PY) bench/run_all.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
