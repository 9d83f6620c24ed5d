# The README's commands. Each target creates the environment it needs.
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test build info lint clean

# Test environment: editable install with every test dependency (PyTorch included).
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip "setuptools>=77" wheel "Cython>=3.0" "numpy>=2.0"
	$(PY) -m pip install $(PIP_FLAGS) --no-build-isolation -e ".[test,bench,dask]"
	touch $@

# Rebuild compiled extensions in place (a no-op when src/ is unchanged).
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

#: what `make test` insists on: both compiled backends built and PyTorch there to compare with
TEST_ENV ?= FASTPOOL_REQUIRE_BACKENDS=numba,cython FASTPOOL_REQUIRE_TORCH=1

test: build
	$(PY) -m fastpool info
	$(TEST_ENV) $(PY) -m pytest -W error -q tests
	$(PY) -m pytest -W error -q -p no:cacheprovider --doctest-modules fastpool \
		--ignore=fastpool/__main__.py --ignore=fastpool/_cuda.py --ignore=fastpool/_cuda_kernels.py \
		--doctest-glob=README.md README.md

# Demo environment: a plain (non-editable) install, as a user would have it, plus PyTorch to compare with.
$(DEMO_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip "setuptools>=77" wheel "Cython>=3.0" "numpy>=2.0"
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) "torch==2.13.0" matplotlib
	touch $@

# (pip reinstalls a local project on every install, so the demo runs the current source)
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-build-isolation .
	cd /tmp && $(CURDIR)/$(DEMO_VENV)/bin/python -m fastpool demo

info: build
	$(PY) -m fastpool info

lint: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) ruff cython-lint pycodestyle
	$(PY) -m ruff check fastpool tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint --max-line-length 100 src/*.pyx src/*.pxi

clean:
	rm -rf build dist *.egg-info fastpool/*.so src/*.c

# ------------------------------------------------------------------------------ benchmarks
# `make bench` is the everyday table (BENCH_ARGS=--quick, --plot docs/bench.png, ...); the asv
# targets keep a performance history under .asv/ (git-ignored). asv builds every commit it
# times into its own virtualenv (asv.conf.json), so they need no build here.
ASV := $(PY) -m asv
#: benchmarks to run (regex over names like "MaxPool.time_pool('numba', '32x64x5x5->7 NCHW')")
ASV_BENCH ?= .
#: asv-history's selection: by default the four float32 ops of both compiled backends (and PyTorch)
#: on one case, and the import time: a few minutes per commit. ASV_HISTORY_BENCH=. times the
#: whole table (hundreds of benchmarks, tens of minutes per commit).
ASV_HISTORY_BENCH ?= (Avg|Max)Pool(Backward)?\.time_pool\(.*32x64x5x5->7 NCHW|timeraw_import_fastpool
#: asv-history: how many of the last commits of HEAD to time (a benchmark already timed at a
#: commit is skipped, so a wider ASV_HISTORY_BENCH later adds only what is missing)
ASV_COMMITS ?= 2
#: asv-compare: a benchmark this much slower on ASV_BRANCH than on ASV_BASE fails the target
ASV_FACTOR ?= 1.5
ASV_BASE ?= main
ASV_BRANCH ?= HEAD
#: asv-compare's selection: fastpool only. The PyTorch peer is the same code on both sides, so
#: a "regression" of it is noise and must not fail the comparison. Narrowed further by
#: ASV_BENCH (both must match), e.g. ASV_BENCH="MaxPool\.time_pool\('numba'" for a quick check.
ASV_COMPARE_BENCH ?= ^(?!.*'torch')
#: asv-smoke (CI): every op and backend on the smallest case, the import time and one first
#: call (~1 min)
ASV_SMOKE ?= Pool(Backward)?(Numpy)?\.time_pool\(.*32x64x5x5->7 NCHW|timeraw_import_fastpool|FirstCall.*'cython', 'max'\)

.PHONY: bench asv-machine asv-history asv-compare asv-smoke

bench: build
	$(PY) -m fastpool bench $(BENCH_ARGS)

# asv asks about the machine once; --yes takes the detected values (kept in ~/.asv-machine.json).
asv-machine: $(VENV)/.installed
	$(ASV) machine --yes > /dev/null

# A hash file, not a HEAD~N..HEAD range, so that a history shorter than N commits still works.
# A benchmark failing at an old commit is part of the history: publish anyway, then say so.
asv-history: asv-machine
	mkdir -p .asv
	git rev-list --max-count=$(ASV_COMMITS) HEAD > .asv/history-commits.txt
	$(ASV) run --skip-existing --show-stderr --bench "$(ASV_HISTORY_BENCH)" \
		HASHFILE:.asv/history-commits.txt; status=$$?; \
	$(ASV) publish && echo "HTML report: .asv/html/index.html (view: $(ASV) preview)"; \
	test $$status -eq 0 || echo "asv run reported failed benchmarks (exit $$status), see above"

# Exits non-zero when a benchmark is slower by ASV_FACTOR on ASV_BRANCH (asv's statistics decide
# that the difference is real, not noise; the rounds of both commits interleave, so a change
# in the machine's load hits both).
asv-compare: asv-machine
	$(ASV) continuous --factor $(ASV_FACTOR) --interleave-rounds --split --show-stderr \
		--bench "^(?=.*(?:$(ASV_BENCH)))(?=.*(?:$(ASV_COMPARE_BENCH)))" $(ASV_BASE) $(ASV_BRANCH)

# In the test venv, against the working tree: the suite still imports and a small subset runs.
asv-smoke: build
	$(ASV) machine --yes > /dev/null
	$(ASV) check --python=same
	$(ASV) run --python=same --quick --show-stderr --bench "$(ASV_SMOKE)"
