# The two commands of the README: `make figures` (the mini profile through Snakemake into
# paper_figures/mini/) and `make test` (the whole test suite). Both create .venv when missing,
# with the pinned dependencies and the `dev` extra (Snakemake, pytest, py-spy) of pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup figures test bench calibrate clean-smoke

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

figures: $(STAMP)
	$(VENV)/bin/snakemake all --cores 2 --configfile config/mini.yaml   # profiles/default is loaded by itself

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m bench

# issue 20: the project's TRPO and SAC beside sb3-contrib's TRPO and Stable-Baselines3's SAC
# (bench/calibration.json, paper_figures/calibration.pdf; hours of CPU, see the README)
calibrate: $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[calibrate]'
	$(VENV)/bin/python bench/calibrate.py --jobs 2

clean-smoke:
	rm -rf results/smoke
