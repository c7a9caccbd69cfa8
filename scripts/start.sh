#!/usr/bin/env bash
# Set up (if needed) and train the classroom demo headless; events stream into runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
config=${1:-$(ls examples/*.yaml | head -n 1)}
run_dir=${RUN_DIR:-runs/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)}
echo "Training $config -> $run_dir"
python -m core train "$config" --run-dir "$run_dir"
