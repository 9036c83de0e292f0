# Every target that needs Python depends on the venv stamp, so a fresh clone sets itself up.
PY      := .venv/bin/python
STAMP   := .venv/.installed
CKPT    ?= models/default
MODEL_BASE ?= models/bert_ner
DATA    ?= ../shared/data/conll2003/dev.txt
TRANSPORT ?= grpc
HOST    ?= 127.0.0.1
TRAIN_ARGS ?=
DOCUMENT ?=

.PHONY: setup test train export serve up image eval bench reliability-report clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-nodeps.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
	.venv/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-nodeps.txt
	.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

train: $(STAMP)
	$(PY) -m train --out build/train $(TRAIN_ARGS)

export: $(STAMP)
	$(PY) -m export --checkpoint $(CKPT) --model_base_path $(MODEL_BASE)

# Main job: export the shipped model if no version exists yet, then serve it
# (Docker when an engine answers, the embedded server otherwise).
serve: $(STAMP)
	@ls $(MODEL_BASE)/[0-9]* >/dev/null 2>&1 || $(MAKE) --no-print-directory export
	$(PY) -m deploy serve --model_base_path $(MODEL_BASE) --host $(HOST)

up: $(STAMP)
	$(PY) -m deploy up --model_base_path $(MODEL_BASE)

image: $(STAMP)
	$(PY) -m deploy image --model_base_path $(MODEL_BASE)

eval: $(STAMP)
	$(PY) -m evaluation --data $(DATA) --transport $(TRANSPORT) $(if $(DOCUMENT),--document)

bench: $(STAMP)
	$(PY) -m bench

# Regenerates docs/RELIABILITY.md from a run of the reliability tests.
reliability-report: $(STAMP)
	WRITE_RELIABILITY_REPORT=1 $(PY) -m pytest -q tests/test_reliability.py

clean:
	rm -rf build .cache .pytest_cache
