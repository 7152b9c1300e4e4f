# `make train` and `make test` work on a fresh clone: they create .venv and install the project first.
# `make help` lists the targets: each is described by the `## ` line above it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# make gpu-report: DATA_DIR holds the CIFAR-100 arrays; DRY_RUN=1 runs the same steps on the CPU; OUT its folder.
DATA_DIR ?= data/cifar100
# make gpu-prepare: the CIFAR-100 arrays to carry, and what the GPU machine's image lacks (docs/benchmarks.md).
ARRAYS ?= ../shared/data/cifar100
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 python-dotenv==1.2.4 submitit==1.5.4 hydra-submitit-launcher==1.2.0
DRY_RUN ?=
OUT ?=
# CPU=1: PyTorch's CPU-only wheels (about 0.2 GB) instead of the CUDA build PyPI gives on Linux (about 6 GB).
CPU ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.DEFAULT_GOAL := help
.PHONY: help install train smoke test test-fast gpu-report gpu-prepare lint format clean slurm-up slurm-down

## List the targets with what each does.
help:
	@awk '/^## /{desc=substr($$0, 4); next} /^[a-z-]+:/{if (desc) {split($$0, t, ":"); printf "  %-10s %s\n", t[1], desc}; desc=""; next} {desc=""}' $(MAKEFILE_LIST)

## Create the virtual environment (VENV, default .venv) and install the project; CPU=1 for CPU-only torch.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(if $(CPU),$(BIN)/python -m pip install torch torchvision --index-url $(TORCH_CPU_INDEX))
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

## Default training (seed WRN, CIFAR-100). Extra Hydra overrides: make train ARGS="trainer=gpu"
train: install
	$(BIN)/python src/train.py $(ARGS)

## Two epochs of the tiny model on synthetic data: checks a laptop set-up in about a minute, offline.
smoke: install
	$(BIN)/python src/train.py model=wrn_tiny data=synthetic trainer=cpu trainer.max_epochs=2 $(ARGS)

## Lint, then the whole test suite (offline, CPU). CI runs exactly this.
test: install lint
	$(BIN)/python -m pytest $(ARGS)

## The GPU measurements (bench, fast recipe, paper recipe) in 9 minutes: DATA_DIR=<CIFAR-100 arrays>; DRY_RUN=1 on CPU.
gpu-report: install
	$(BIN)/python -m wrncifar.gpu_report $(if $(DRY_RUN),--dry-run,--data-dir "$(DATA_DIR)") $(if $(OUT),--out "$(OUT)") $(ARGS)

## For a lent GPU machine: .whl/ (the wheels its Python 3.12 lacks) and .gpu_data/ (ARRAYS in 55 MB parts).
gpu-prepare: install
	rm -rf .whl .gpu_data && mkdir -p .whl .gpu_data
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(BIN)/python -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
	tar -c -C "$(dir $(abspath $(ARRAYS)))" "$(notdir $(abspath $(ARRAYS)))" | split -b 55M - .gpu_data/part_

## The suite without the tests marked slow (subprocess runs and multi-epoch training).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

## Check formatting and lint with ruff (what pre-commit and CI run).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Fix what ruff can fix and format the code.
format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Start a two-node SLURM cluster on this machine, as the tests do (installs Debian's packages; root).
slurm-up:
	$(PYTHON) -m tests.slurm.cluster up

## Stop the cluster of `make slurm-up`.
slurm-down:
	$(PYTHON) -m tests.slurm.cluster down

## Remove logs and tool caches (not the virtual environment).
clean:
	rm -rf logs .pytest_cache .ruff_cache
