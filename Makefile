# The Python environment: the active virtualenv (or conda environment) when there is one, else a
# project .venv, created on first use (a system Python that refuses `pip install`, PEP 668,
# is only used to create it). Every target that runs code installs brainseg into it first.
ENV_DIR ?= $(or $(VIRTUAL_ENV),$(CONDA_PREFIX),.venv)
PYTHON := $(ENV_DIR)/bin/python
INSTALLED := $(ENV_DIR)/.brainseg-installed
SWEEP ?=
DATA_ROOT ?= ../shared/datasets/figshare-brain-tumor-png256

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format smoke sweep sweep-cpu report bench docs

help:  ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-10s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## Install brainseg with its development tools (editable) into ENV_DIR

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(ENV_DIR)
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

test: $(INSTALLED)  ## Run the fast tests (everything not marked slow)
	$(PYTHON) -m pytest -m "not slow" -q

test-all: $(INSTALLED)  ## Run every test, the slow ones included
	$(PYTHON) -m pytest -q

lint: $(INSTALLED)  ## Check style with ruff
	$(PYTHON) -m ruff check brainseg tests benchmarks
	$(PYTHON) -m ruff format --check brainseg tests benchmarks

format: $(INSTALLED)  ## Fix style with ruff
	$(PYTHON) -m ruff check --fix brainseg tests benchmarks
	$(PYTHON) -m ruff format brainseg tests benchmarks

smoke: $(INSTALLED)  ## Two models x two seeds on synthetic data, end to end (about a minute)
	rm -rf multirun/smoke  # a check from scratch: a sweep run again keeps its finished jobs
	$(PYTHON) -m brainseg.train -m experiment=smoke model=unet,fpn seed=0,1 hydra.sweep.dir=multirun/smoke

sweep: $(INSTALLED)  ## The study's sweep: both models x 5 seeds, 80 epochs at 256x256 (a GPU job)
	$(PYTHON) -m brainseg.train -m model=unet,fpn 'seed=range(5)'

sweep-cpu: $(INSTALLED)  ## The reduced CPU protocol on the real PNG data set (DATA_ROOT), 3 seeds
	$(PYTHON) -m brainseg.train -m experiment=cpu data=folder data.root=$(DATA_ROOT) \
		model=unet,fpn pretrained=false seed=0,1,2

report: $(INSTALLED)  ## Table, statistics and figures of a sweep: make report SWEEP=multirun/<date>/<time>
	@test -n "$(SWEEP)" || (echo "usage: make report SWEEP=multirun/<date>/<time>" && exit 2)
	$(PYTHON) -m brainseg.report $(SWEEP)

bench: $(INSTALLED)  ## CPU benchmarks (data pipeline, networks, the zoo, throughput) into benchmarks/results/
	$(PYTHON) benchmarks/data_pipeline.py
	$(PYTHON) benchmarks/models.py
	$(PYTHON) benchmarks/zoo.py
	$(PYTHON) benchmarks/throughput.py

docs: $(INSTALLED)  ## Regenerate docs/benchmarks.md and docs/models.md from benchmarks/results/*.json
	$(PYTHON) benchmarks/render_docs.py
