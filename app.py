"""Aha Studio in the browser: `python app.py [--host H] [--port P] [--runs-dir DIR] [--trusted]`.

On Hugging Face Spaces (SPACE_ID set) it binds 0.0.0.0:7860. Nothing here phones home.
"""
from __future__ import annotations

import argparse
import os
import sys

# Before gradio is imported: no analytics, no update checks, no telemetry, no hub calls at start.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    on_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(description="Aha Studio: GRPO fine-tuning in the browser.")
    p.add_argument("--host", default="0.0.0.0" if on_space else
                   os.environ.get("AHA_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=7860 if on_space else
                   int(os.environ.get("AHA_PORT", "7860")))
    p.add_argument("--runs-dir", default=os.environ.get("AHA_RUNS_DIR", "runs"),
                   help="Where runs are kept (default: runs/).")
    p.add_argument("--trusted", action="store_true",
                   help="Trusted mode, for a local single-user studio: lets the code rewards "
                        "(python_tests, custom_python) run Python in a sandboxed process.")
    args = p.parse_args(argv)
    if args.trusted:
        if on_space:
            p.error("--trusted is for a local, single-user studio, not a shared Space.")
        os.environ["AHA_STUDIO_TRUSTED"] = "1"  # inherited by the training workers
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from studio.app import launch
    launch(args.host, args.port, args.runs_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
