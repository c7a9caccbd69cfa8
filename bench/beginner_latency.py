"""What a beginner waits for, measured in a real browser against a real studio.

One studio server (`python app.py`, its own process, a fresh runs folder) and headless Chromium
walk the quick path a beginner takes: the built-in sample data, the proposed rewards, the quick
demo, Start. Measured, in one run on the built-in model:

- seconds from pressing Start to the first point on the charts (step 1 done and drawn);
- seconds from choosing the run in "Try and export" until the page says the model is ready
  (choosing a checkpoint starts a model process that loads it while the user types);
- seconds per answer (the trained adapter and the base model side by side) for the first
  question, asked once it is ready, and the second one (the model stays loaded), until both
  answers are complete, and until both show their first words (they are written word by word);
  and what a beginner who asks at once waits for the first answer: the load, then the answer.
  Target on a 2-core CPU: the second answer at most 0.1x the first asked at once.

Where llama.cpp is installed the chat answers through it (core.gguf_chat); its copy of the
built-in model is made once per machine (kept in the cache folder), so the JSON says whether it
was there before this run (then "ready" holds the adapter's conversion and the load only).

The JSON names the machine and its load before and after (a busy machine makes every figure
longer).

    python bench/beginner_latency.py [--out bench/results/beginner_latency_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from studio.machine import cpu_name  # noqa: E402
from core.runs import free_port  # noqa: E402

CHROMIUM = os.environ.get("AHA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update"]
QUESTIONS = ("What is 2 + 3?", "What is 7 + 5?")


def wait_until(predicate, timeout: float, what: str) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return time.time()
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/results/beginner_latency_cpu.json"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    runs = Path(tempfile.mkdtemp(prefix="aha-bench-beginner-"))
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir",
                               str(runs)], cwd=ROOT, env=env, stdout=open(runs / "server.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    load_before = os.getloadavg()
    from core.config import ModelConfig
    from core.engine_choice import chat_engine
    from core.gguf_chat import cache_folder
    copy_made_before = (cache_folder(ModelConfig(source="default", precision="4bit"))
                        / "base.gguf").exists()
    result: dict = {}
    try:
        wait_until(lambda: _answers(url), 120, "the studio to start")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.locator("#aha-ready [data-draft]").wait_for(state="attached")
            page.click("#tab-data-button")
            page.click("#data-sample")
            wait_until(lambda: "rows" in page.inner_text("#data-messages"), 60, "the sample data")
            page.click("#tab-train-button")
            page.click("#train-demo")
            time.sleep(1)
            if page.locator("#preset-confirm").first.is_visible():
                page.click("#preset-apply")
            time.sleep(1)

            started = time.time()
            page.click("#train-start")
            time.sleep(1)
            if page.locator("#train-fit-confirm").first.is_visible():
                page.locator("#train-fit-confirm button").first.click()

            def step() -> int:
                value = page.locator(".aha-progress").first.get_attribute("data-step")
                return int(value or 0)

            first_point = wait_until(lambda: step() >= 1, 900, "the first chart point")
            result["start_to_first_chart_point_s"] = round(first_point - started, 1)
            page.click("#train-stop")
            wait_until(lambda: (page.locator(".aha-progress").first.get_attribute("data-state")
                                in ("stopped", "finished")), 900, "the run to stop")

            page.click("#tab-export-button")
            chosen = time.time()
            page.click("#export-refresh")  # picks the run: its model loads while one types
            ready = wait_until(lambda: "Ready" in page.inner_text("#chat-status"), 900,
                               "the model to be loaded")
            result["choosing_to_ready_s"] = round(ready - chosen, 1)
            answers, words = [], []
            for question in QUESTIONS:
                page.locator("#chat-question textarea, #chat-question input").first.fill(question)
                asked = time.time()
                page.click("#chat-ask")

                def started(q=question) -> bool:  # both answers show their first words
                    texts = [page.inner_text(f"#{e}") for e in ("chat-trained", "chat-base")]
                    return all(q in t and t.rsplit(q, 1)[1].strip() for t in texts)

                def complete() -> bool:  # the status names the checkpoint once both are whole
                    status = page.inner_text("#chat-status")
                    return "Answered" in status and "⏳" not in status

                first_words = wait_until(started, 900, f"the answers to {question!r}")
                done = wait_until(complete, 900, f"the whole answers to {question!r}")
                words.append(round(first_words - asked, 1))
                answers.append(round(done - asked, 1))
            result["try_it_answer_s"] = {"first": answers[0], "second": answers[1]}
            result["try_it_first_words_s"] = {"first": words[0], "second": words[1]}
            result["second_over_first"] = round(answers[1] / answers[0], 3)
            # a beginner who asks before the load ends waits for the rest of it, then the answer
            result["first_answer_asked_at_once_s"] = round(result["choosing_to_ready_s"]
                                                           + answers[0], 1)
            result["second_over_first_asked_at_once"] = round(
                answers[1] / result["first_answer_asked_at_once_s"], 3)
            result["target_second_over_first"] = 0.1
            result["answered_by"] = page.inner_text("#chat-status").strip()[:200]
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        for pid_file in runs.glob("**/worker.pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    out = {"benchmark": "beginner_latency", "date": time.strftime("%Y-%m-%d"),
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "load_average_1min": {"before": round(load_before[0], 2),
                                 "after": round(os.getloadavg()[0], 2)},
           "path": "sample data, proposed rewards, quick demo preset, built-in model",
           "chat_engine": chat_engine(False), "llama_cpp_copy_made_before": copy_made_before,
           **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
