"""UI request latency while a run trains, in the production process layout.

One studio server (`python app.py`, its own process) and one training worker started through
`core.runs.RunManager` (its own process and session, as the studio starts it), both on this
machine. While the worker trains the classroom demo, a client keeps asking the server what a
browser asks: the page itself, the timer tick that reads new events and renders charts, the runs
list, and a full re-render of the run (the heaviest request). Writes p50/p95 per kind and overall
to bench/results/ui_latency_<device>.json. Target: p95 < 300 ms.

    python bench/ui_latency.py [--seconds 90] [--out bench/results/ui_latency_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.runs import free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(pct(values, 0.5) * 1000, 1),
            "p95_ms": round(pct(values, 0.95) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
            "mean_ms": round(statistics.mean(values) * 1000, 1)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=90, help="measuring time while training")
    p.add_argument("--config", default=str(ROOT / "examples" / "01-classroom-demo.yaml"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")

    from gradio_client import Client

    from core.config import RunConfig
    from core.events import read_events
    from core.runs import RunManager

    runs_dir = Path(tempfile.mkdtemp(prefix="aha-bench-ui-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir",
                               str(runs_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    manager = RunManager(runs_dir)
    run_dir = None
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        cfg = RunConfig.load(args.config)
        cfg.train.max_steps = 500  # longer than the measurement; stopped at the end
        run_dir = manager.create(cfg)
        manager.start(run_dir)
        print("waiting for the worker to train…", flush=True)
        while True:
            events, _ = read_events(run_dir)
            if any(e["type"] == "metrics" for e in events):
                break
            if not manager.is_alive(run_dir):
                raise SystemExit("the worker died before its first step; see worker.log")
            time.sleep(1)
        client = Client(url, verbose=False)
        client.predict(api_name="/runs_list")  # as the page does on load: offers the runs
        client.predict(run_dir.name, api_name="/show_run")
        timings: dict[str, list[float]] = {"page": [], "tick": [], "runs_list": [],
                                           "show_run": []}
        kinds = ["tick", "page", "tick", "runs_list", "tick", "show_run"]
        step_before = manager.status(run_dir).step
        end = time.time() + args.seconds
        i = 0
        while time.time() < end:
            kind = kinds[i % len(kinds)]
            t0 = time.perf_counter()
            if kind == "page":
                urllib.request.urlopen(url, timeout=30).read()
            elif kind == "tick":
                client.predict(api_name="/watch_tick")
            elif kind == "runs_list":
                client.predict(api_name="/runs_list")
            else:
                client.predict(run_dir.name, api_name="/show_run")
            timings[kind].append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.25)
        step_after = manager.status(run_dir).step
        assert manager.is_alive(run_dir), "the worker stopped during the measurement"
    finally:
        if run_dir is not None:
            manager.stop(run_dir)
            try:
                os.killpg(manager.pid(run_dir), signal.SIGKILL)
            except (OSError, TypeError):
                pass
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)

    everything = [t for v in timings.values() for t in v]
    result = {
        "benchmark": "ui_latency", "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "config": Path(args.config).name, "seconds": args.seconds,
        "steps_trained_during_measurement": step_after - step_before,
        "overall": summary(everything),
        "by_request": {k: summary(v) for k, v in timings.items() if v},
        "target_p95_ms": 300, "meets_target": pct(everything, 0.95) < 0.3,
    }
    try:
        with open("/proc/cpuinfo") as f:
            result["machine"]["cpu"] = next(l.split(":", 1)[1].strip() for l in f
                                            if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = Path(args.out or ROOT / "bench" / "results" / "ui_latency_cpu.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
