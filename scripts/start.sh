#!/usr/bin/env bash
# Set up (if needed) and open the studio in the browser: http://127.0.0.1:7860 (embedded model,
# works offline). Options go to app.py: --host, --port, --runs-dir.
# To train the classroom demo headless instead: scripts/start.sh --headless [CONFIG]
# Where llama.cpp is missing it is built in the background at the lowest CPU priority (about
# 8 minutes on 2 cores, only with cores nothing else wants; log: .venv/llama-cpp-setup.log): the
# chat answers with transformers until it is there, then with llama.cpp, about twice as fast.
# AHA_NO_LLAMA_CPP=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
if [ "${1:-}" = "--headless" ]; then
  config=${2:-$(ls examples/*.yaml | head -n 1)}
  run_dir=${RUN_DIR:-runs/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)}
  echo "Training $config -> $run_dir"
  exec python -m core train "$config" --run-dir "$run_dir"
fi
# (setup_export.sh takes a lock: a second start while it builds waits, then finds it done)
if [ -z "${AHA_NO_LLAMA_CPP:-}" ] &&
    ! python -c "import core.gguf_chat as g, sys; sys.exit(not g.ready())" 2> /dev/null; then
  echo "Building llama.cpp in the background for faster chat answers (log: .venv/llama-cpp-setup.log)"
  nohup nice -n 19 bash scripts/setup_export.sh >> .venv/llama-cpp-setup.log 2>&1 < /dev/null &
fi
exec python app.py "$@"
