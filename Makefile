# Two commands for a new user: `make demo` and `make test`. Both create/refresh .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-experiments lint format venv clean docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin the CPU torch that lies on these machines' disk when no torch is importable:
	# a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,data,eval,bench,distill,anchors,onnx,serve,vision,gguf,audio]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/encore bench

# Two pytest workers, a test file each at a time (module fixtures built once); OpenMP threads that wait
# sleep instead of spinning, so the two workers' torch never spin against each other on 2 cores.
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile tests

test-experiments: $(STAMP)
	$(BIN)/python -m pytest tests -m experiment

lint: $(STAMP)
	$(BIN)/ruff check encore tests
	$(BIN)/ruff format --check encore tests

format: $(STAMP)
	$(BIN)/ruff format encore tests
	$(BIN)/ruff check --fix encore tests

docs: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info
