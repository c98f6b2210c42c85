# The two commands of the README: `make sample` (install, run the sample pipeline, write the
# report) and `make test` (install, run the tests). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# pytest-xdist workers for `make test` and `make test-fast`: each test module runs on one worker
# (its fixtures are made once), the slowest modules first (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
# Packages are installed by uv (itself from PyPI, into the venv): it unpacks wheels in parallel.
# Here everything `make test` needs took 75-86 s with uv against 188 s with pip, from empty
# caches (2026-12-01). uv does not read pip's configuration, so the indexes pip is set to use (a
# mirror, a folder of wheels) are passed on, merged as pip merges them (unsafe-best-match: the
# best version from any index).
# uv does not byte-compile what it installs: Python compiles what a run imports and caches it
# (.pyc) on first import. An environment with PYTHONDONTWRITEBYTECODE set forbids that cache, and
# then every process compiles all it imports, every time: importing torchvision's detection
# models took 16-18 s instead of 7, starting Snakemake 9.4 s instead of 2.6 (here, 2026-12-01;
# `uv pip install --compile-bytecode` instead added 42 s to the install). So the recipes run
# without it; only this project's .venv and src/ get .pyc files.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
PIP := $(UV) pip install --quiet --python $(PY) --native-tls --index-strategy unsafe-best-match \
	$(shell python3 envs/pip_indexes.py)

.PHONY: install install-test sample test test-fast lint clean
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/.installed: envs/requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(PIP) -r envs/requirements.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed envs/test.txt envs/detectors.txt envs/yolox.txt
	$(PIP) -r envs/test.txt
	$(PIP) -r envs/detectors.txt
	$(PIP) --no-build-isolation --no-deps -r envs/yolox.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

sample: install
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report report.html
	@echo "Leaderboard: results/leaderboard.csv   Report: report.html"

test: install-test
	$(VENV)/bin/ruff check .
	$(PYTEST)

# The unit tests: everything not marked slow (pipeline runs, multi-process and kill-and-resume
# training), for the edit-test loop.
test-fast: install-test
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not slow"

clean:
	rm -rf results logs raw .snakemake report.html
