# The two commands of the README: `make sample` (install, run the sample pipeline, write the
# report) and `make test` (install, run the tests). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2

.PHONY: install install-test sample test test-fast lint clean

$(VENV)/.installed: envs/requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r envs/requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed envs/test.txt envs/detectors.txt envs/yolox.txt
	$(PY) -m pip install --quiet -r envs/test.txt
	$(PY) -m pip install --quiet -r envs/detectors.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -r envs/yolox.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

sample: install
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report report.html
	@echo "Leaderboard: results/leaderboard.csv   Report: report.html"

test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# The unit tests: everything not marked slow (pipeline runs, multi-process and kill-and-resume
# training), for the edit-test loop.
test-fast: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf results logs raw .snakemake report.html
