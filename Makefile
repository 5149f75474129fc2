# Set-up, demo and tests. Every target creates or refreshes .venv first, so each one works on a
# fresh clone: `make demo` and `make test` are the README's two commands.
#
# The environment is locked: requirements/cpu.lock holds the exact version of every package
# (made by `uv pip compile`, refreshed by `make lock`), and `uv pip sync` makes .venv equal to it,
# removing anything else. Source distributions are built against the pinned build backend in
# requirements/build-constraints.txt, never against whatever setuptools the registry serves today.
# Bytecode is compiled at install (--compile-bytecode): where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile Paddle, PaddleNLP, SciPy and scikit-learn again (~20 s a start).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/cpu.lock
BUILD_CONSTRAINTS := requirements/build-constraints.txt
UV_VERSION := $(shell sed -n 's/^uv==//p' $(LOCK))
UV := $(BIN)/uv
# PADDLE=gpu: paddlepaddle-gpu (from PADDLE_GPU_INDEX) replaces paddlepaddle; every other package
# stays at its locked version.
PADDLE ?= cpu
PADDLE_GPU_INDEX ?= https://www.paddlepaddle.org.cn/packages/stable/cu126/
PADDLE_VERSION := $(shell sed -n 's/^paddlepaddle==//p' $(LOCK))
PLUGINS := qwen_vl blip2 visualglm datasets
STAMP := $(VENV)/.mixcore-installed
PYTEST_ARGS ?=

.PHONY: install lock demo test lint format bench clean

install: $(STAMP)

$(STAMP): $(LOCK) $(BUILD_CONSTRAINTS) pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; v == (3, 11) or print(f"warning: $(LOCK) was made for Python 3.11; this is {v[0]}.{v[1]}", file=sys.stderr)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) && $(UV) --version | grep -qx 'uv $(UV_VERSION)' || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
ifeq ($(PADDLE),gpu)
	grep -v '^paddlepaddle==' $(LOCK) > $(VENV)/gpu.lock
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --build-constraints $(BUILD_CONSTRAINTS) $(VENV)/gpu.lock
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --constraints $(VENV)/gpu.lock \
		--extra-index-url $(PADDLE_GPU_INDEX) "paddlepaddle-gpu==$(PADDLE_VERSION)"
else
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --build-constraints $(BUILD_CONSTRAINTS) $(LOCK)
endif
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --build-constraints $(BUILD_CONSTRAINTS) \
		-e . $(foreach p,$(PLUGINS),-e plugins/$(p))
	$(BIN)/mixcore doctor
	@touch $(STAMP)

# Re-resolve every package to the newest versions the pyproject files allow, for the tested
# platform (CPython 3.11 on Linux x86-64). Review the diff, then run `make test`.
lock:
	@test -x $(UV) || $(MAKE) install
	$(UV) pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--extra paddle --extra test --custom-compile-command "make lock" \
		--build-constraints $(BUILD_CONSTRAINTS) pyproject.toml -o $(LOCK)

# The main job on its embedded default: train the tiny Qwen-VL on generated shape pictures (CPU,
# a few minutes), then answer the held-out test questions and show a few answers.
DEMO_CONFIG := examples/configs/qwen_vl_shapes_sft.json
DEMO_OUT := demo_output
demo: install
	$(BIN)/mixcore plugins list
	$(BIN)/mixcore train --config $(DEMO_CONFIG) --output-dir $(DEMO_OUT)/sft
	$(BIN)/mixcore infer --model $(DEMO_OUT)/sft --output $(DEMO_OUT)/test_predictions.jsonl \
		--data examples/configs/.mixcore-data/shapes-demo/test.json --show 8

# lint-imports checks the contracts of pyproject.toml's [tool.importlinter]: mixcore's layers, the
# contract package importing nothing else, plugins importing only the public API, no cycles. The
# example plugins are not installed (each would be one more plugin for every command), so their
# folders are put on the path for the check.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=examples/mixcore-example-plugin:examples/mixcore-tiny-llava $(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache .grimp_cache
