# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3.11
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.raal-installed
# Every environment installs from a lock (README: Install). pyproject.toml holds the top-level requirements,
# uv.lock the resolution (every transitive package, with hashes), locks/*.txt its pip-installable exports.
# `make lock` regenerates all of them; pip installs them --no-deps, so nothing outside the lock can come in.
LOCK     := locks/dev.txt
LS_LOCK  := locks/labelstudio.txt
LS_BUILD_LOCK := locks/labelstudio-build.txt
PIP_HASHED := -m pip install -q --disable-pip-version-check --require-hashes --no-deps
PIP_LOCKED := $(PIP_HASHED) --only-binary :all:
# pip warns once per package for each local file:// index of this machine's pip.conf that lacks it: noise.
HUSH_LOCAL_INDEX := 2>&1 | { grep -v "^WARNING: Location 'file:///.*' is ignored" || true; }
UV       := $(VENV)/bin/uv
UV_EXPORT := export --frozen --format requirements-txt --no-emit-project --no-header --quiet

# Label Studio (for the live-labeling end-to-end test and the walkthrough) in its own venv from its own lock
# (locks/labelstudio/pyproject.toml): its Django pins are not raal's. label-studio 1.23.2 brings label-studio-sdk
# 2.1.2, whose converter makes the export test fixtures.
LS_VENV  ?= .venv-ls
LS_STAMP := $(LS_VENV)/.ls-installed

.PHONY: demo test test-fast lint lint-counts install bench clean-runs labelstudio lock lock-check env-check chromium

$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_LOCKED) -r $(LOCK) $(HUSH_LOCAL_INDEX)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . $(HUSH_LOCAL_INDEX)
	$(PY) -m raal.lockcheck $(LOCK) --unlocked | xargs -r $(PY) -m pip uninstall -y -q  # a package the lock dropped
	$(PY) -m raal.lockcheck $(LOCK)
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP): $(LS_LOCK) $(LS_BUILD_LOCK) | $(STAMP)
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python $(PIP_LOCKED) -r $(LS_BUILD_LOCK) $(HUSH_LOCAL_INDEX)
	$(LS_VENV)/bin/python $(PIP_HASHED) --no-build-isolation -r $(LS_LOCK) $(HUSH_LOCAL_INDEX)
	$(PY) -m raal.lockcheck $(LS_LOCK) --venv $(LS_VENV) --unlocked | xargs -r $(LS_VENV)/bin/python -m pip uninstall -y -q
	$(PY) -m raal.lockcheck $(LS_LOCK) --venv $(LS_VENV)
	rm -rf $(LS_VENV)/template  # a migrated sqlite database that each test copies (migrating takes most of a start)
	LABEL_STUDIO_BASE_DATA_DIR=$(LS_VENV)/template $(LS_VENV)/bin/label-studio version > /dev/null
	touch $(LS_STAMP)

labelstudio: $(LS_STAMP)

demo: $(STAMP)
	$(PY) -m raal.run conf=demo

# The whole suite with everything it needs: Label Studio's venv and Debian's Chromium (what CI runs, .ci/run).
test: $(STAMP) $(LS_STAMP) chromium
	$(PY) -m pytest

# The report's browser test renders report.html in Debian's headless Chromium (root, or sudo, installs it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Regenerate the locks from pyproject.toml (and locks/labelstudio/pyproject.toml); pins already in a lock are kept
# unless a requirement no longer allows them. `make lock UPGRADE=--upgrade-package=NAME` bumps one package.
# What each export holds: the dev venv (runtime, dev extra, offline assets, pip/setuptools), the cluster nodes
# (runtime, cluster extra, assets), faiss-gpu for bench/gpu.sh, Label Studio's venv and the tools its sdists need.
EXPORT_DEV     := --extra dev --group assets --group build
EXPORT_CLUSTER := --extra cluster --group assets
EXPORT_GPU     := --only-group gpu-faiss
EXPORT_LS      := --project locks/labelstudio --all-groups
EXPORT_LS_BUILD := --project locks/labelstudio --only-group build
lock: $(STAMP)
	$(UV) lock $(UPGRADE)
	$(UV) lock --project locks/labelstudio $(UPGRADE)
	$(UV) $(UV_EXPORT) $(EXPORT_DEV) -o $(LOCK)
	$(UV) $(UV_EXPORT) $(EXPORT_CLUSTER) -o locks/cluster.txt
	$(UV) $(UV_EXPORT) $(EXPORT_GPU) -o locks/gpu-faiss.txt
	$(UV) $(UV_EXPORT) $(EXPORT_LS) -o $(LS_LOCK)
	$(UV) $(UV_EXPORT) $(EXPORT_LS_BUILD) -o $(LS_BUILD_LOCK)

# CI: each lock agrees with its pyproject (uv's own check mode: fails when a requirement changed without
# `make lock`), and each export is exactly what the lock gives (fails when an export was edited by hand).
lock-check: $(STAMP)
	$(UV) lock --check
	$(UV) lock --check --project locks/labelstudio
	$(UV) $(UV_EXPORT) $(EXPORT_DEV) | diff -u $(LOCK) -
	$(UV) $(UV_EXPORT) $(EXPORT_CLUSTER) | diff -u locks/cluster.txt -
	$(UV) $(UV_EXPORT) $(EXPORT_GPU) | diff -u locks/gpu-faiss.txt -
	$(UV) $(UV_EXPORT) $(EXPORT_LS) | diff -u $(LS_LOCK) -
	$(UV) $(UV_EXPORT) $(EXPORT_LS_BUILD) | diff -u $(LS_BUILD_LOCK) -

# The installed environments equal their locks (no package missing, added or at another version).
env-check: $(STAMP) $(LS_STAMP)
	$(PY) -m raal.lockcheck $(LOCK)
	$(PY) -m raal.lockcheck $(LS_LOCK) --venv $(LS_VENV)

# For development: no Ray and no slow tests (every Ray test carries the `ray` marker; tests/conftest.py checks it).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not ray and not slow"

# Static checks (CI runs them before the tests); rules and their reasons are in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check raal tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

lint-counts: $(STAMP)
	PY=$(PY) .ci/lint-counts

bench: $(STAMP)
	$(PY) bench/strategies.py --quick
	$(PY) bench/transfer.py --quick
	$(PY) bench/embed.py --quick
	$(PY) bench/train.py --quick

clean-runs:
	rm -rf runs
