#!/usr/bin/env bash
# GGUF export and the chat's llama.cpp engine: llama.cpp's quantizer and loader (llama-cpp-python,
# built from source by pip) and llama.cpp's own converters (convert_hf_to_gguf.py, and
# convert_lora_to_gguf.py for the chat's adapters, with their conversion/ and gguf-py/ folders),
# taken from the same llama-cpp-python release and unpacked into .venv/share/aha-llama.cpp.
# Idempotent. Usage: scripts/setup_export.sh   (also: scripts/setup.sh --export)
# Another llama.cpp checkout can be used instead: AHA_LLAMA_CPP=/path/to/llama.cpp
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^llama-cpp-python==//p' requirements-export.txt)
[ -x .venv/bin/python ] || bash scripts/setup.sh
# one install at a time (scripts/start.sh may be building it in the background): a second one
# waits for the first, then finds it done
if command -v flock > /dev/null; then
  exec 9> .venv/llama-cpp-setup.lock
  flock 9
fi
. .venv/bin/activate
dest=.venv/share/aha-llama.cpp
stamp=$dest/.installed
want="llama-cpp-python==$VERSION $(sha256sum requirements-export.txt | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dest/convert_lora_to_gguf.py" ] &&
    python -c "import llama_cpp" 2>/dev/null; then
  exit 0
fi
# the library without llava (not needed here; it halves the build)
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
if [ "$(uname -m)" = x86_64 ]; then
  # no AMX: in virtual machines that report AMX but do not grant its register state (this
  # project's CI machine is one), llama.cpp's AMX kernels crash on every quantized model
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx"
fi
python -m pip install --quiet -r requirements-export.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION"
top="llama_cpp_python-$VERSION/vendor/llama.cpp"
tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp" \
  "$top/convert_hf_to_gguf.py" "$top/convert_lora_to_gguf.py" "$top/conversion" "$top/gguf-py" "$top/LICENSE"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/$top" "$dest"
echo "$want" > "$stamp"
