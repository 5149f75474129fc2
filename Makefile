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
		--config-settings editable_mode=compat \
		-e ".[$(EXTRAS)]" $(foreach p,$(PLUGINS),-e plugins/$(p))
	$(BIN)/mixcore plugins check
	@touch $(STAMP)

# Until `mixcore train` lands, the demo shows the installed plugins and validates the embedded
# default config; the validator truthfully reports that qwen_vl cannot train yet.
demo: install
	$(BIN)/mixcore plugins list
	@echo
	-$(BIN)/mixcore validate --config examples/configs/qwen_vl_shapes_sft.json

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
