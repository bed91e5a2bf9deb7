# The two commands of the README: `make figures` (the mini profile through Snakemake into
# paper_figures/mini/) and `make test` (the whole test suite). Both create .venv when missing,
# with the pinned dependencies and the `dev` extra (Snakemake, pytest, py-spy) of pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup figures test bench clean-smoke

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

clean-smoke:
	rm -rf results/smoke
