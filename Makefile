# The two commands of the README: `make figures` (the mini profile through Snakemake into
# paper_figures/) and `make test` (the whole test suite). Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup figures test bench clean-smoke

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e .
	touch $(STAMP)

figures: $(STAMP)
	$(VENV)/bin/snakemake all --profile profiles/local --cores 2 --configfile config/mini.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m bench

clean-smoke:
	rm -rf results/smoke
