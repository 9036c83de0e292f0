# Every target that needs Python depends on the venv stamp, so a fresh clone sets itself up.
# `make help` lists the targets from their `## ` comments.
PY      := .venv/bin/python
STAMP   := .venv/.installed
TF218   := .venv-tf218
BENCH_VENV := .venv-bench
CKPT    ?= models/default
MODEL_BASE ?= models/bert_ner
DATA    ?= ../shared/data/conll2003/dev.txt
TRANSPORT ?= grpc
HOST    ?= 127.0.0.1
GRPC_PORT ?= 8500
REST_PORT ?= 8501
DEMO_PORT ?= 8080
# The model server a client target talks to: the port of TRANSPORT's protocol on HOST, so that
# `make eval GRPC_PORT=9500` reaches the server `make serve GRPC_PORT=9500` started.
SERVER  = $(HOST):$(if $(filter rest,$(TRANSPORT)),$(REST_PORT),$(GRPC_PORT))
TRAIN_ARGS ?=
BENCH_ARGS ?=
DOCUMENT ?=

.PHONY: help setup tf218 lint test test-fast train export serve up image eval bench demo demo-screenshot reliability-report verify-text mutate clean

help: ## this list
	@awk -F ':.*## ' '/^[a-z0-9-]+:.*## / {printf "  make %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: CKPT MODEL_BASE HOST GRPC_PORT REST_PORT DEMO_PORT DATA TRANSPORT INPUT SIGNATURE TRAIN_ARGS BENCH_ARGS TEST_WORKERS MUTANTS MUTANT_SAMPLE;" \
		"BERT_NER_VERBOSE=1 keeps TensorFlow's start-up logs"

setup: $(STAMP) ## create .venv with the pinned dependencies (done by every target on first use)

$(STAMP): pyproject.toml requirements.lock requirements-nodeps.txt
	@echo "setup: creating .venv with the pinned dependencies (first run only, a few minutes)"
	@python3 -m venv .venv
	@.venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
	@.venv/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-nodeps.txt
	@.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# TensorFlow 2.18, the version tensorflow/serving:2.18.0 embeds, in a venv of its own: the tests load
# the export and parse the Docker configs with it. About 30 s from PyPI with a cold pip cache.
tf218: $(TF218)/.installed ## .venv-tf218: TensorFlow 2.18 (the image's) for the runtime checks

$(TF218)/.installed: requirements-tf218.lock
	rm -rf $(TF218)
	python3 -m venv $(TF218)
	$(TF218)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-tf218.lock
	touch $@

# Lint and type check, configured in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: $(STAMP) ## ruff (lint + format check) and mypy on the typed interfaces
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# One pytest worker per core (pytest-xdist), each running whole test modules, so a module's
# export and server are built once; most slow tests wait on a subprocess, a socket or a timeout.
TEST_WORKERS ?= 2
test: $(STAMP) $(TF218)/.installed ## the whole test suite, on TEST_WORKERS (2) workers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# The unit tests: no training, real export, server or other subprocess, MiniLM, TF 2.18,
# chromium or Docker, none over ~1 s (tests marked `slow` or `docker` are left out).
test-fast: $(STAMP) ## the unit tests only (under a minute): pytest -m "not slow and not docker"
	$(PY) -m pytest -q -m "not slow and not docker"

train: $(STAMP) ## train a model into build/train (TRAIN_ARGS=... adds flags)
	$(PY) -m bert_ner.train --out build/train $(TRAIN_ARGS)

export: $(STAMP) ## export CKPT (default: the shipped model) as the next version under MODEL_BASE
	$(PY) -m bert_ner.export --checkpoint $(CKPT) --model_base_path $(MODEL_BASE)

serve: $(STAMP) ## serve the latest export on HOST:GRPC_PORT/REST_PORT (exports CKPT first if none)
	@$(PY) -m bert_ner.deploy serve --checkpoint $(CKPT) --model_base_path $(MODEL_BASE) --host $(HOST) \
		--grpc_port $(GRPC_PORT) --rest_port $(REST_PORT)

up: $(STAMP) ## Docker: build the TF Serving image and run it (needs a Docker engine)
	$(PY) -m bert_ner.deploy up --checkpoint $(CKPT) --host $(HOST) \
		--grpc_port $(GRPC_PORT) --rest_port $(REST_PORT)

image: $(STAMP) ## Docker: build the TF Serving image; its first stage exports CKPT
	$(PY) -m bert_ner.deploy image --checkpoint $(CKPT)

eval: $(STAMP) ## tag DATA through TRANSPORT (grpc, rest or local) on HOST:GRPC_PORT/REST_PORT, DOCUMENT=1 by documents, INPUT=text as text
	$(PY) -m bert_ner.evaluation --data $(DATA) --transport $(TRANSPORT) $(if $(DOCUMENT),--document) \
		$(if $(filter local,$(TRANSPORT)),,--server $(SERVER)) \
		$(if $(INPUT),--input $(INPUT)) $(if $(SIGNATURE),--signature $(SIGNATURE))

# The bench's peers (spaCy, the int8 ONNX encoder: pyproject's `bench` extra) in a venv of their
# own, so TensorFlow and they never share one; bert_ner/bench/peers.py runs in it as a subprocess.
$(BENCH_VENV)/.installed: requirements-bench.lock
	rm -rf $(BENCH_VENV)
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-bench.lock
	touch $@

# A peer venv that cannot be made leaves the bench to run with its peers marked skipped.
bench: $(STAMP) ## throughput, latency, memory and two peers of the shipped model -> bench/results.*, docs/SCALING.md
	@$(MAKE) --no-print-directory $(BENCH_VENV)/.installed || echo "bench: no $(BENCH_VENV); peers skipped"
	$(PY) -m bert_ner.bench $(BENCH_ARGS)

demo: $(STAMP) ## the tagging page on http://127.0.0.1:DEMO_PORT (8080), talking to the server on HOST:GRPC_PORT/REST_PORT
	$(PY) -m bert_ner.demo --transport $(TRANSPORT) --server $(SERVER) --port $(DEMO_PORT)

demo-screenshot: $(STAMP) ## regenerate docs/demo.png (README's screenshot) from the browser test
	WRITE_DEMO_SCREENSHOT=1 $(PY) -m pytest -q tests/test_demo_browser.py

reliability-report: $(STAMP) ## regenerate docs/RELIABILITY.md from a run of the reliability tests
	WRITE_RELIABILITY_REPORT=1 $(PY) -m pytest -q tests/reliability

verify-text: $(STAMP) ## the in-graph tokenizer against the featurizer on CoNLL and 100,000 generated strings
	TEXT_CORPUS_SIZE=100000 $(PY) -m pytest -q tests/test_text_graph.py

# mutmut (a dev dependency) over bert_ner/server and bert_ner/clients as [tool.mutmut] in
# pyproject.toml sets it, judged by the fast tests. A whole run is hours on 2 cores:
# MUTANTS="bert_ner.server.metrics.* bert_ner.clients.common.*" runs some modules only, and
# MUTANT_SAMPLE=150 a seeded random sample of that many mutants per folder (about 15 minutes).
MUTMUT  ?= .venv/bin/mutmut
MUTANTS ?=
MUTANT_SAMPLE ?=
MUTMUT_RUN = CONLL2003_DIR=$(abspath $(dir $(DATA))) $(MUTMUT) run
mutate: $(STAMP) ## named mutations (tests/mutate.py; exit 1 if one survives), then mutmut's over the server and clients, scored per folder
	$(PY) tests/mutate.py
ifeq ($(MUTANT_SAMPLE),)
	$(MUTMUT_RUN) $(MUTANTS)
else
	@# mutmut has no generate-only command: a filter matching nothing makes it write the mutants
	@# and collect which tests reach them, then stop (with an error this ignores).
	-$(MUTMUT_RUN) "no-such-mutant*" >/dev/null 2>&1
	$(MUTMUT_RUN) $$($(PY) tests/mutation_score.py --sample $(MUTANT_SAMPLE) mutants)
endif
	$(PY) tests/mutation_score.py mutants

clean: ## remove build/, .cache/ and .pytest_cache/
	rm -rf build .cache .pytest_cache
