# ioussl developer targets. `make demo` runs the main job, `make test` the tests (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format bench demo example clean slurm-up slurm-down postgres-up postgres-down

install: $(VENV)/.installed

# The CPU wheel of torch is pinned and installed first: a plain `torch` requirement would pull a
# multi-GB CUDA build. Everything else comes from pyproject.toml.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[science,dev,postgres]'
	touch $@

test: install
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check ioussl tests benchmarks scripts
	$(PY) -m mypy

format: install
	$(PY) -m ruff format ioussl tests benchmarks scripts

bench: install
	$(PY) benchmarks/run_all.py

demo: install
	$(VENV)/bin/ioussl demo

# registry.db.example: Table 4.2 of the thesis imported from its per-run DSCs.
example: install
	rm -f registry.db.example
	$(VENV)/bin/ioussl import results jobs/thesis.toml jobs/thesis-table-4.2.csv \
		--db registry.db.example --base-dir jobs \
		--source "thesis Table 4.2 (README of dittohed/exploring-ssl-for-ct)"
	rm -f registry.db.example-wal registry.db.example-shm

slurm-up:
	bash scripts/slurm-local-up.sh

slurm-down:
	bash scripts/slurm-local-down.sh

# A throw-away PostgreSQL for the registry tests; export the URL it prints as IOUSSL_TEST_PG_URL.
postgres-up:
	bash scripts/postgres-local-up.sh

postgres-down:
	bash scripts/postgres-local-down.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
