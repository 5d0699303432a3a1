#!/usr/bin/env bash
# The torch-free runtime alone, in a fresh virtual environment: onnxruntime, numpy and tokenizers,
# then encore itself without its core dependencies (torch, transformers), running a model that
# `encore export` wrote on another machine.
#
#   encore export --model CHECKPOINT --out exported/        # where torch is
#   bash examples/runtime_without_torch.sh exported/ "def add(a, b):"
set -euo pipefail
exported=$(cd "$1" && pwd)
prompt=${2:-"def add(a, b):"}
repo=$(cd "$(dirname "$0")/.." && pwd)
env=$(mktemp -d)/venv
python3 -m venv "$env"
"$env/bin/python" -m pip install -q onnxruntime numpy tokenizers
"$env/bin/python" -m pip install -q --no-deps "$repo"
cd "$(dirname "$env")"  # away from the source tree: the installed package is the one imported
"$env/bin/python" - "$exported" "$prompt" <<'PY'
import importlib.util
import sys

assert importlib.util.find_spec("torch") is None, "torch is installed in this environment"
from encore.onnx import OnnxGenerator

generator = OnnxGenerator(sys.argv[1])
print(repr(generator.generate_text(sys.argv[2], max_new_tokens=16)))
assert "torch" not in sys.modules
print("ran without torch")
PY
