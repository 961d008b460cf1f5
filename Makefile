# The project's interface. Every target sets itself up: a fresh clone needs only Python 3.11+ and make.
#   make bench      run every stage and every peer, write results/ and the charts, update the README table
#   make test       the test suite (correctness against ONNX Runtime, errors, tools)
#   make help       everything else

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The tested versions (requirements.lock, refreshed by `make lock`); UNLOCKED=1 takes pyproject.toml's ranges.
LOCK := requirements.lock
SETUP := $(VENV)/.installed$(if $(UNLOCKED),-unlocked)
OPENVINO_VERSION := 2026.4.1

# $(call q,NAME): make variable NAME as one shell word, whatever it holds (spaces, quotes, backticks, $):
# single-quoted, each ' written as '\'', and taken with $(value) so make does not expand a $( in it either.
# Every variable a user sets reaches the shell this way, never pasted in bare.
q = '$(subst ','\'',$(value $(1)))'
given = $(strip $(value $(1)))
RUN = $(foreach v,RESNET50_WEIGHTS RESNET50_CACHE,$(if $(call given,$(v)),$(v)=$(call q,$(v)))) $(PY)

SOURCE ?= auto
SEED ?= 0
STAGE ?=
STAGES ?=
IMG ?=
FORMAT ?= text
A ?=
B ?=
CPP_SRC ?=
NOTES ?=
WORKERS ?= auto
# (After the defaults: `unexport X` defines X, and `X ?= ...` would then keep it empty.)
# make expands a variable it exports to a recipe's environment (a command-line IMG='$(shell ...)' would
# run), so the knobs are not exported; the two the programs read from the environment are passed quoted.
KNOBS := CPP_SRC IMG STAGE STAGES SOURCE SEED FORCE FORMAT RESULTS A B NOTES QUICK THREADS WORKERS RESNET50_WEIGHTS RESNET50_CACHE
unexport $(KNOBS)
BENCH_COLUMNS := --benchmark-columns=min,median,rounds --benchmark-sort=name

.PHONY: help setup lock weights weights-ready test test-avx2 bench cpp chart classify profile ablate regress baseline diff codegen lint torch openvino clean clean-cache

help:
	@echo "make bench                  every stage and peer on images/, results/ + charts + README table (QUICK=1, STAGES=01,06)"
	@echo "make test                   the test suite"
	@echo "make test-avx2              the stage tests compiled for an AVX2-only CPU (Haswell), on any x86 machine"
	@echo "make cpp CPP_SRC=path/to/cv_learning_resnet50   make bench with the C++ original built and run here too"
	@echo "make classify IMG=photo.jpg [STAGE=01|ref] [FORMAT=json]   top-5 classes and latency"
	@echo "make weights [SOURCE=auto|hub|random|torchvision|file.safetensors|.npz|.pth] [SEED=0] [FORCE=1]"
	@echo "make chart                  redraw charts and the README table from results/latest.json"
	@echo "make profile STAGE=06 [THREADS=1]   time and GFLOP/s per layer, next to ONNX Runtime's at equal threads"
	@echo "make regress                latency regression check against results/baseline.json (make baseline rewrites it)"
	@echo "make diff A=03 B=04 [NOTES=1]   the lesson between two stages: resnet50.py (and NOTES.md)"
	@echo "make ablate STAGE=07        each idea of a rung switched off in turn, into its NOTES.md (any stage with ABLATIONS)"
	@echo "make codegen                write the generated kernels of 05 and later to codegen/ to read"
	@echo "make torch | make openvino  install an optional peer into .venv"
	@echo "make lint | make clean | make clean-cache (generated kernels in ~/.cache/resnet50-ladder)"
	@echo "make setup [UNLOCKED=1]     .venv with the tested versions (requirements.lock); make lock refreshes it"
	@echo "Paths and names are passed to the programs as they are: IMG='my photo.png' needs no extra quoting."

setup: $(SETUP)

# Re-run when the lock or pyproject.toml changes. pip reads only the local package registries here.
$(SETUP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed; run make PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing dependencies into $(VENV) ($(if $(UNLOCKED),pyproject.toml's ranges,the tested versions in $(LOCK)))" >&2
	@$(PY) -m pip install --quiet --disable-pip-version-check $(if $(UNLOCKED),".[dev]",-r $(LOCK)) 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import numba, onnxruntime, PIL, matplotlib, pytest' || { echo "setup: installing failed" >&2; exit 1; }
	@rm -f $(VENV)/.installed*
	@touch $@

# Rebuild requirements.lock from pyproject.toml's ranges: a scratch venv, the newest versions they allow.
lock:
	@rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	@.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check ".[dev]"
	@{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude resnet50-ladder; } > $(LOCK).new
	@mv $(LOCK).new $(LOCK) && rm -rf .venv-lock
	@echo "lock: $(LOCK) rewritten; run make test and make bench before committing it"

# Made once when missing ($$RESNET50_WEIGHTS or weights/); `make weights` re-makes on request. A path that
# holds anything but a store this project made is refused, and nothing there is touched.
weights-ready: $(SETUP)
	@w=$(if $(call given,RESNET50_WEIGHTS),$(call q,RESNET50_WEIGHTS),weights); \
	test -f "$$w/manifest.json" || $(RUN) -m common.make_weights --source auto

weights: $(SETUP)
	@$(RUN) -m common.make_weights --source=$(call q,SOURCE) --seed=$(call q,SEED) $(if $(call given,FORCE),--force)

# The tests in parallel, one test file per worker, a worker per core (WORKERS=1: one process): most of the
# time is numba compiling, one stage per process, and a lock in the cache lets one process compile each.
XDIST = -n $(call q,WORKERS) --dist loadfile --warm-stages

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: weights-ready
	@$(RUN) -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

# What `make bench` and `make cpp` both pass on: the stages to run, a quick pass.
# QUICK=1 (or any value but 0, no, false) asks for a quick pass.
quick = $(if $(filter-out 0 no false,$(call given,QUICK)),--quick)
BENCH_ARGS = $(if $(call given,STAGES),--stages=$(call q,STAGES)) $(quick)

# The stage tests as a CPU without AVX-512 runs them: numba compiles for Haswell (AVX2 + FMA, 16 ymm registers),
# whatever this machine has (common.isa reads the target; generated code is cached per target).
AVX2 := NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=
STAGE_TESTS := tests/test_0*.py tests/test_1[0-9]_*.py tests/test_stages_vs_judge.py tests/test_selfcheck.py tests/test_isa.py tests/test_peak.py \
	tests/test_generated_code.py
test-avx2: weights-ready
	@$(AVX2) $(RUN) -m pytest $(XDIST) $(STAGE_TESTS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test-avx2: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

bench: weights-ready
	@$(RUN) -m bench.run $(BENCH_ARGS)

# The C++ original as a peer: a checkout of dongtuoc/cv_learning_resnet50 (never changed: it is copied),
# built with cmake and OpenCV and run with this project's weights and images, in the same run as the stages.
cpp: weights-ready
	@$(if $(call given,CPP_SRC),,echo "cpp: CPP_SRC=path/to/cv_learning_resnet50 is needed (git clone https://github.com/dongtuoc/cv_learning_resnet50)" >&2; exit 2)
	@$(RUN) -m bench.run --cpp=$(call q,CPP_SRC) $(BENCH_ARGS)

chart: $(SETUP)
	@$(RUN) -m bench.chart $(if $(call given,RESULTS),--results=$(call q,RESULTS))

# `--` before the image: a file named -x.png is a file, not an option.
classify: weights-ready
	@$(RUN) -m common.classify $(if $(call given,STAGE),--stage=$(call q,STAGE)) --format=$(call q,FORMAT) \
		$(if $(call given,IMG),-- $(call q,IMG))

profile: weights-ready
	@$(RUN) -m bench.profile --stage=$(if $(call given,STAGE),$(call q,STAGE),06) $(if $(call given,THREADS),--threads=$(call q,THREADS))

regress: weights-ready
	@$(RUN) -m pytest bench/regress -p no:cacheprovider -q $(BENCH_COLUMNS) $(REGRESS_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "regress: no benchmarks collected; failing" >&2; exit 1; fi; exit $$rc

baseline: weights-ready
	@$(RUN) -m pytest bench/regress -p no:cacheprovider -q $(BENCH_COLUMNS) --write-baseline

diff:
	@a=$(call q,A); b=$(call q,B); \
	case "$$a$$b" in [0-9][0-9][0-9][0-9]) ;; *) echo "usage: make diff A=03 B=04 (two stage numbers)" >&2; exit 2;; esac; \
	sa=$$(ls -d stages/"$$a"_* 2>/dev/null | head -1); sb=$$(ls -d stages/"$$b"_* 2>/dev/null | head -1); \
	test -n "$$sa" -a -n "$$sb" || { echo "diff: no stage $$a or $$b in stages/" >&2; exit 2; }; \
	files="resnet50.py"; if [ -n $(call q,NOTES) ]; then files="resnet50.py NOTES.md"; fi; \
	for f in $$files; do diff -u "$$sa/$$f" "$$sb/$$f"; done \
	| { if [ -t 1 ] && command -v colordiff >/dev/null; then colordiff; else cat; fi; }; true

ablate: weights-ready
	@$(RUN) -m bench.ablate --stage=$(if $(call given,STAGE),$(call q,STAGE),05) $(quick)

codegen: $(SETUP)
	@$(RUN) -m bench.codegen_dump --out codegen

lint: $(SETUP)
	@$(VENV)/bin/ruff check .

# Optional peers. torch==2.13.0 is the small CPU build; a plain `torch` would pull a multi-GB CUDA build.
torch: $(SETUP)
	@$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import torch; print("torch", torch.__version__)'

openvino: $(SETUP)
	@$(PY) -m pip install --quiet --disable-pip-version-check "openvino==$(OPENVINO_VERSION)" 2>&1 | grep -v '^WARNING: Location' >&2 || true
	@$(PY) -c 'import openvino; print("openvino", openvino.__version__)'

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache .ruff_cache .benchmarks .hypothesis codegen
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Generated kernels of every version made so far (one folder per generator version); rebuilt on next use.
# Only folders this project wrote are removed; anything else in the cache folder is named and left alone.
clean-cache: $(SETUP)
	@$(RUN) -m common.codegen_cache --clean
