PYTHON ?= python
SWEEP ?=
DATA_ROOT ?= ../shared/datasets/figshare-brain-tumor-png256

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format smoke sweep sweep-cpu report bench

help:  ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-10s %s\n", $$1, $$2}'

install:  ## Install brainseg with its development tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## Run the fast tests (everything not marked slow)
	$(PYTHON) -m pytest -m "not slow" -q

test-all:  ## Run every test, the slow ones included
	$(PYTHON) -m pytest -q

lint:  ## Check style with ruff
	$(PYTHON) -m ruff check brainseg tests benchmarks
	$(PYTHON) -m ruff format --check brainseg tests benchmarks

format:  ## Fix style with ruff
	$(PYTHON) -m ruff check --fix brainseg tests benchmarks
	$(PYTHON) -m ruff format brainseg tests benchmarks

smoke:  ## Two models x two seeds on synthetic data, end to end (seconds)
	$(PYTHON) -m brainseg.train -m experiment=smoke model=unet,fpn seed=0,1 hydra.sweep.dir=multirun/smoke

sweep:  ## The study's sweep: both models x 5 seeds, 80 epochs at 256x256 (a GPU job)
	$(PYTHON) -m brainseg.train -m experiment=study model=unet,fpn 'seed=range(5)'

sweep-cpu:  ## The reduced CPU protocol on the real PNG data set (DATA_ROOT), 2 seeds
	$(PYTHON) -m brainseg.train -m experiment=cpu data=folder data.root=$(DATA_ROOT) \
		model=unet,fpn pretrained=false seed=0,1

report:  ## Table, statistics and figures of a sweep: make report SWEEP=multirun/<date>/<time>
	@test -n "$(SWEEP)" || (echo "usage: make report SWEEP=multirun/<date>/<time>" && exit 2)
	$(PYTHON) -m brainseg.report $(SWEEP)

bench:  ## CPU benchmarks (data pipeline, networks, throughput) into benchmarks/results/
	$(PYTHON) benchmarks/data_pipeline.py
	$(PYTHON) benchmarks/models.py
	$(PYTHON) benchmarks/throughput.py
