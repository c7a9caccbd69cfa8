#!/usr/bin/env bash
# Set up (if needed) and open the studio in the browser: http://127.0.0.1:7860 (embedded model,
# works offline). Options go to app.py: --host, --port, --runs-dir.
# To train the classroom demo headless instead: scripts/start.sh --headless [CONFIG]
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
exec python app.py "$@"
