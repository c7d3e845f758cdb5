# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.edgevit-installed

.PHONY: setup demo test test-fast test-full clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull gigabytes of CUDA packages.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[build,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/edgevit build --target x86-cpu
	$(VENV)/bin/edgevit inspect bundles/supervit-nano-x86-cpu

# The suite CI runs: everything but the demo-scale runs (under 15 min on 2 cores).
test: setup
	$(PY) -m pytest -q --durations=15 -m "not full"

# No training, no builds (under 2 min).
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not full"

# Adds the demo-scale runs: the default training and every preset of the default models (about 35 min).
test-full: setup
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf runs bundles .edgevit-cache .pytest_cache
