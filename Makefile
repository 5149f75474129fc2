# Set-up, demo and tests. Every target creates or refreshes .venv first, so each one works on a
# fresh clone: `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU machines: `make install EXTRAS=paddlenlp,test` after installing paddlepaddle-gpu yourself.
EXTRAS ?= paddle,test
PLUGINS := qwen_vl blip2 visualglm datasets
STAMP := $(VENV)/.mixcore-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools>=77" wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-build-isolation \
		-e ".[$(EXTRAS)]" $(foreach p,$(PLUGINS),-e plugins/$(p))
	$(BIN)/mixcore plugins check
	@touch $(STAMP)

# The main job on its embedded default: train the tiny Qwen-VL on generated shape pictures (CPU,
# a few minutes), then answer the held-out test questions and show a few answers.
DEMO_CONFIG := examples/configs/qwen_vl_shapes_sft.json
DEMO_OUT := demo_output
demo: install
	$(BIN)/mixcore plugins list
	$(BIN)/mixcore train --config $(DEMO_CONFIG) --output-dir $(DEMO_OUT)/sft
	$(BIN)/mixcore infer --model $(DEMO_OUT)/sft --output $(DEMO_OUT)/test_predictions.jsonl \
		--data examples/configs/.mixcore-data/shapes-demo/test.json --show 8

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
