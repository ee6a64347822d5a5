# unitune quick start:  make demo  (a search on the embedded defaults)  ·  make test
# Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; a plain `torch` requirement pulls a multi-GB CUDA build.
# On a machine with CUDA: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,towers,dev,server]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/unitune search jobs/demo.yaml

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Lint, format and types of platform/ (configured in pyproject.toml; .ci/run runs it first).
check: setup
	$(VENV)/bin/ruff check platform
	$(VENV)/bin/ruff format --check platform
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .unitune mlruns.db mlartifacts optuna.db
