# Quick start: `make run` (install, then the default pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CORES  ?= 2
STAMP   = $(VENV)/.installed

.PHONY: install run test bench dry-run clean

install: $(STAMP)

# torch first, from its own pin: an open `torch` requirement would pull CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$$(grep '^torch==' constraints.txt)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,slurm]"
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml

dry-run: install
	$(BIN)/snakemake --cores $(CORES) --dry-run --quiet

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/ntk_bench.py

clean:
	rm -rf results .snakemake
