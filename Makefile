# rlpost: the two commands of the README.
#   make quickstart   set up (if needed) and run tokenizer -> pretrain -> SFT -> GRPO on the tiny model (CPU)
#   make test         set up (if needed), check style (ruff) and run the test suite
#   make test-fast    the same without the end-to-end runs (tests marked slow): a quick loop while editing
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlpost-setup

.PHONY: setup quickstart test test-fast

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

quickstart: setup
	$(PY) recipes/pipeline.py

test: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=30

test-fast: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"
