# The project's interface. Every target sets itself up: a fresh clone needs only Python 3.11+ and make.
#   make bench      run every stage and every peer, write results/ and the charts, update the README table
#   make test       the test suite (correctness against ONNX Runtime, errors, tools)
#   make help       everything else

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
comma := ,
SETUP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
WEIGHTS_DIR := $(or $(RESNET50_WEIGHTS),weights)
WEIGHTS := $(WEIGHTS_DIR)/manifest.json

SOURCE ?= auto
SEED ?= 0
STAGE ?=
STAGES ?=
IMG ?=
FORMAT ?= text
A ?=
B ?=
BENCH_COLUMNS := --benchmark-columns=min,median,rounds --benchmark-sort=name

.PHONY: help setup weights test bench chart classify profile regress baseline diff codegen lint torch openvino clean clean-cache

help:
	@echo "make bench                  every stage and peer on images/, results/ + charts + README table (QUICK=1, STAGES=01,06)"
	@echo "make test                   the test suite"
	@echo "make classify IMG=photo.jpg [STAGE=01|ref] [FORMAT=json]   top-5 classes and latency"
	@echo "make weights [SOURCE=auto|hub|random|torchvision|file.safetensors|.npz|.pth] [SEED=0] [FORCE=1]"
	@echo "make chart                  redraw charts and the README table from results/latest.json"
	@echo "make profile STAGE=06       time and GFLOP/s per layer"
	@echo "make regress                latency regression check against results/baseline.json (make baseline rewrites it)"
	@echo "make diff A=03 B=04         the lesson between two stages"
	@echo "make codegen                write stage 05's generated kernels to codegen/ to read"
	@echo "make torch | make openvino  install an optional peer into .venv"
	@echo "make lint | make clean | make clean-cache (generated kernels in ~/.cache/resnet50-ladder)"

setup: $(SETUP)

# Re-run when pyproject.toml changes. pip reads only the local package registries here.
$(SETUP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed; run make PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing dependencies into $(VENV) (first run only)" >&2
	@$(PY) -m pip install --quiet --disable-pip-version-check ".[$(EXTRAS)]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import numba, onnxruntime, PIL, matplotlib, pytest' || { echo "setup: installing failed" >&2; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

# Made once when missing; `make weights` re-makes on request.
$(WEIGHTS): | $(SETUP)
	@$(PY) -m common.make_weights --source auto

weights: $(SETUP)
	@$(PY) -m common.make_weights --source "$(SOURCE)" --seed $(SEED) $(if $(FORCE),--force)

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: $(SETUP) $(WEIGHTS)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

bench: $(SETUP) $(WEIGHTS)
	@$(PY) -m bench.run $(if $(STAGES),--stages $(STAGES)) $(if $(QUICK),--quick)

chart: $(SETUP)
	@$(PY) -m bench.chart $(if $(RESULTS),--results $(RESULTS))

classify: $(SETUP) $(WEIGHTS)
	@$(PY) -m common.classify $(IMG) $(if $(STAGE),--stage $(STAGE)) --format $(FORMAT)

profile: $(SETUP) $(WEIGHTS)
	@$(PY) -m bench.profile --stage $(or $(STAGE),06)

regress: $(SETUP) $(WEIGHTS)
	@$(PY) -m pytest bench/regress -p no:cacheprovider -q $(BENCH_COLUMNS) $(REGRESS_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "regress: no benchmarks collected; failing" >&2; exit 1; fi; exit $$rc

baseline: $(SETUP) $(WEIGHTS)
	@$(PY) -m pytest bench/regress -p no:cacheprovider -q $(BENCH_COLUMNS) --write-baseline

diff:
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=03 B=04" >&2; exit 2; }
	@a=$$(ls -d stages/$(A)_* 2>/dev/null | head -1); b=$$(ls -d stages/$(B)_* 2>/dev/null | head -1); \
	test -n "$$a" -a -n "$$b" || { echo "diff: no stage $(A) or $(B) in stages/" >&2; exit 2; }; \
	diff -ru --exclude=__pycache__ "$$a" "$$b" | { if [ -t 1 ] && command -v colordiff >/dev/null; then colordiff; else cat; fi; }; true

codegen: $(SETUP) $(WEIGHTS)
	@$(PY) -m bench.codegen_dump --out codegen

lint: $(SETUP)
	@$(VENV)/bin/ruff check .

# Optional peers. torch==2.13.0 is the small CPU build; a plain `torch` would pull a multi-GB CUDA build.
torch: $(SETUP)
	@$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import torch; print("torch", torch.__version__)'

openvino: $(SETUP)
	@$(PY) -m pip install --quiet --disable-pip-version-check openvino 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import openvino; print("openvino", openvino.__version__)'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks .hypothesis codegen
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Generated kernels of every version made so far (one folder per generator version); rebuilt on next use.
clean-cache:
	rm -rf "$(or $(RESNET50_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/resnet50-ladder)/codegen"
