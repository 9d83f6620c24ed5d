# The README's commands. Each target creates the environment it needs.
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test build info lint clean

# Test environment: editable install with every test dependency (PyTorch CPU included).
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip "setuptools>=64" wheel "Cython>=3.0" "numpy>=2.0"
	$(PY) -m pip install $(PIP_FLAGS) --no-build-isolation -e ".[test,bench,dask]"
	touch $@

# Rebuild compiled extensions in place (a no-op when src/ is unchanged).
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m fastpool info
	$(PY) -m pytest -W error -q tests
	$(PY) -m pytest -W error -q --doctest-modules fastpool --ignore=fastpool/__main__.py -p no:cacheprovider

# Demo environment: a plain (non-editable) install, as a user would have it, plus PyTorch to compare with.
$(DEMO_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip "setuptools>=64" wheel "Cython>=3.0" "numpy>=2.0"
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) "torch==2.13.0" matplotlib
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-build-isolation --force-reinstall --no-deps .
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-build-isolation .
	cd /tmp && $(CURDIR)/$(DEMO_VENV)/bin/python -m fastpool demo

info: build
	$(PY) -m fastpool info

lint: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) ruff cython-lint
	$(PY) -m ruff check fastpool tests benchmarks
	$(PY) -m cython-lint src || true

clean:
	rm -rf build dist *.egg-info fastpool/*.so src/*.c
