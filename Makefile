# The two set-up commands of the README: `make repro` and `make test`. Both work offline on a fresh
# machine (only the package registries are reached, for the install).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false
export MLFLOW_TRACKING_URI := sqlite:///$(CURDIR)/mlruns.db

.PHONY: install repro test faults mlflow-ui clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, transformers, decord, av, mlflow, dvc, diffusionret"
	touch $(STAMP)

install: $(STAMP)

# dvc needs a git repository; a plain copy of the tree gets one so the pipeline still runs.
repro: $(STAMP)
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || (git init -q && git add -A && git -c user.name=diffusionret -c user.email=diffusionret@localhost commit -qm "snapshot")
	time dvc repro
	dvc metrics show

# Two test files at a time (pytest-xdist, one per core; a file's tests stay in one worker, so its module fixtures
# are built once), each worker's torch on one thread; files with `slow` tests go first (tests/conftest.py: the
# minutes-long ones start at once, the short ones fill in; --no-loadscope-reorder keeps that order).
# TEST_WORKERS=0 runs everything in one process, one after the other.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# fault injection (bad downloads, full disk, bad annotations, killed runs): a table and totals, 0 files lost
faults: $(STAMP)
	$(PY) benchmarks/faults.py

# The default trained and evaluated with several seeds, one DVC experiment `seed-<s>` each (seed, train.seed,
# eval.seed), then reports/seeds.md + reports/seeds.json: mean ± std over seeds and the pooled paired CI of each
# difference. e.g. `make seeds SEEDS="0 1 2"`; ARGS passes more options (e.g. ARGS="-S train.steps=300").
SEEDS ?= 0 1 2
.PHONY: seeds
seeds: $(STAMP)
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || (git init -q && git add -A && git -c user.name=diffusionret -c user.email=diffusionret@localhost commit -qm "snapshot")
	$(VENV)/bin/diffusionret seeds --seeds $(SEEDS) $(ARGS)

# Every similarity head (model.head's choices; HEADS overrides) trained and evaluated with and without re-ranking, one
# DVC experiment `<head>-seed-<s>` each, then reports/heads.md + reports/heads.json. Resumable, also after a new
# commit: a head already collected in reports/heads/ is not trained again. SEEDS given on the command line runs each
# head with those seeds (default: the params' own seed); ARGS passes more -S overrides (e.g. fewer steps:
# ARGS="-S train.steps=450 -S train_gen.steps=250"). Each head trains as long as `make repro` (900 + 500 steps):
# five heads in 24 minutes on one core (README, "Other systems").
HEADS ?=
.PHONY: heads
heads: $(STAMP)
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || (git init -q && git add -A && git -c user.name=diffusionret -c user.email=diffusionret@localhost commit -qm "snapshot")
	$(VENV)/bin/diffusionret heads $(if $(strip $(HEADS)),--heads $(HEADS)) $(if $(filter command line environment,$(origin SEEDS)),--seeds $(SEEDS)) $(ARGS)

# Prints the run table's address first (MLflow 3's home page opens on GenAI traces, not on training runs).
mlflow-ui: $(STAMP)
	@echo "runs of the default experiment: $$(diffusionret mlflow-url --base http://127.0.0.1:5000 2>/dev/null)"
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000 --workers 1

# Paper presets (configs/presets/): the official recipe of one benchmark, e.g. `make paper PRESET=msrvtt-9k-vitb32`.
# The preset command allows the Hugging Face hub for its backbone (this file switches the hub off for the rest);
# ARGS passes more options, e.g. ARGS="--backbone /data/clip-vit-base-patch32 -S train.micro_batch=32".
.PHONY: paper
paper: $(STAMP)
	@test -n "$(PRESET)" || (echo "set PRESET, one of:"; $(VENV)/bin/diffusionret preset list; exit 2)
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || (git init -q && git add -A && git -c user.name=diffusionret -c user.email=diffusionret@localhost commit -qm "snapshot")
	HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 $(VENV)/bin/diffusionret preset run $(PRESET) $(ARGS)
