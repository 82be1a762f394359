# Two entry points: `make demo` and `make test`. Both create (or reuse) a virtualenv in .venv and
# install the package with constraints.txt, which pins torch to the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memlong-installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m memlong demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m memlong bench ingest --model shipped --methods memlong,base_full,base_sliding,base_windows \
		--threads 1 --json docs/results/bench_ingest.json --plot docs/results/bench_ingest.png
	$(PY) scripts/render_readme.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
