"""Screenshot of the studio showing a finished run, for the README (docs/studio.png).

    python scripts/screenshot_studio.py RUN_DIR [--out docs/studio.png]

Copies RUN_DIR into a fresh runs folder, starts the studio on a loopback port, opens it in the
system Chromium (headless), shows the run on the train step and saves a full-page screenshot.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import (CHROMIUM, CHROMIUM_ARGS, pick, start_server,  # noqa: E402
                                    stop_server, tab)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "studio.png")
    p.add_argument("--name", default="classroom-demo")
    p.add_argument("--height", type=int, default=1800, help="pixels from the top")
    args = p.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="aha-shot-"))
    target = runs / args.name
    shutil.copytree(args.run_dir, target, ignore=shutil.ignore_patterns("checkpoints", "*.pid"))
    url, proc = start_server(runs)
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": args.height})
            page.goto(url)
            page.wait_for_selector("#machine-info", timeout=60_000)
            tab(page, "4 · Train")
            page.wait_for_selector("#runs-pick", timeout=60_000)
            page.click("#runs-refresh")
            time.sleep(2)
            pick(page, "runs-pick", args.name)
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            time.sleep(4)  # the charts settle
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": 1280,
                                                      "height": args.height})
            browser.close()
    finally:
        stop_server(proc, runs)
        shutil.rmtree(runs, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
