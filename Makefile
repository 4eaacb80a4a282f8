# `make run`: install, then a character-level LSTM on the Python standard library's own source: a fixed
# number of steps (DEMO_STEPS, about two minutes on 2 cores), or DEMO_MINUTES of training when set.
# `make test`: install, then the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STDLIB := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
DEMO := runs/demo
DEMO_STEPS ?= 300
DEMO_MINUTES ?=
DEMO_LIMIT := $(if $(DEMO_MINUTES),--max-minutes $(DEMO_MINUTES) --max-steps 0,--max-steps $(DEMO_STEPS))

.PHONY: run test install bench clean

install: $(VENV)/.installed

# torch is pinned to the CPU build here (a local wheel on our machines); the package itself asks only torch>=2.5.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	rm -rf $(DEMO)
	$(BIN)/seqfit prepare $(STDLIB)/email $(STDLIB)/asyncio $(STDLIB)/logging $(STDLIB)/http \
		--pattern '*.py' --level char --encoding-errors replace --valid-fraction 0.05 --out $(DEMO)/data
	$(BIN)/seqfit train $(DEMO)/data --out $(DEMO)/run --config examples/demo.toml $(DEMO_LIMIT)
	$(BIN)/seqfit generate $(DEMO)/run --prompt 'def ' --tokens 400 --temperature 0.7 --seed 1

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs
