"""A class of 30 on one studio: UI latency and training speed, with and without them.

One classroom server (`python app.py --classroom USERS.yaml`, its own process) on loopback. Each
simulated student signs in through Gradio's login, uploads a small CSV, has a run of the
classroom demo of their own in the queue (at most K train; the rest wait in line) and watches
its live view as the page does: the 2-second timer tick, the runs list every 15 seconds, and a
full re-render of the run now and then. First the training runs alone for a few steps (the step
time without load), then all students watch for the same number of steps. Writes p50/p95 of
every kind of request and the two step times to bench/results/classroom_load_<device>.json.

Bounded: at most --students clients (30), only 127.0.0.1, and every phase has a time limit.
Target: p95 under 1 s with 30 students, and the training step slowed by at most 1.3x.

    python bench/classroom_load.py [--students 30] [--steps 4] [--workers 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ui_latency import free_port, summary  # noqa: E402


def wait_http(url: str, proc, seconds: float = 120) -> None:
    import urllib.error
    import urllib.request
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the studio did not start")
            time.sleep(0.5)
    raise SystemExit("the studio did not answer in time")


def step_times(run_dir: Path) -> list[tuple[float, float]]:
    """(end time, step time) of each step so far."""
    from core.events import read_events
    return [(e["time"], e["step_time"]) for e in read_events(run_dir)[0]
            if e["type"] == "metrics"]


def wait_steps(run_dir: Path, n: int, seconds: float) -> list[float]:
    """Wait for n more steps of the run; their step times."""
    start = len(step_times(run_dir))
    deadline = time.time() + seconds
    while len(step_times(run_dir)) < start + n and time.time() < deadline:
        time.sleep(1)
    return [t for _, t in step_times(run_dir)[start:start + n]]


def student(url: str, name: str, password: str, ref: str, stop: threading.Event,
            latencies: dict, errors: list, csv_path: str) -> None:
    from gradio_client import Client, handle_file

    try:
        t0 = time.perf_counter()
        client = Client(url, auth=(name, password), verbose=False, download_files=False)
        latencies["sign_in"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.predict(handle_file(csv_path), api_name="/on_upload")
        latencies["upload"].append(time.perf_counter() - t0)
        client.predict(api_name="/runs_list")  # what the page does on load: offers the runs
        t0 = time.perf_counter()
        client.predict(ref, api_name="/show_run")
        latencies["show_run"].append(time.perf_counter() - t0)
    except Exception as exc:  # a failure to join is a result, not a crash of the benchmark
        errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    import httpx

    # The timer's events skip the queue (queue=False); a browser sends each as one plain POST
    # in its session, not through the queue's event stream that the client library uses.
    http = httpx.Client(base_url=url, cookies=client.cookies, timeout=60)
    last_list = time.monotonic()
    rng = random.Random(name)
    time.sleep(rng.random() * 2)  # browsers do not tick in step
    while not stop.is_set():
        kind, api, data = "tick", "watch_tick", [None]  # the watch State: the session's own
        if time.monotonic() - last_list > 15:
            kind, api, data, last_list = "runs_list", "runs_list", [], time.monotonic()
        t0 = time.perf_counter()
        try:
            answer = http.post(f"gradio_api/run/{api}",
                               json={"data": data, "session_hash": client.session_hash})
            if answer.status_code != 200 or "data" not in answer.json():
                raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:120]}")
            latencies[kind].append(time.perf_counter() - t0)
        except Exception as exc:
            errors.append(f"{name} {kind}: {type(exc).__name__}: {str(exc)[:200]}")
        stop.wait(max(0.0, 2.0 - (time.perf_counter() - t0)))
    http.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--students", type=int, default=30)
    p.add_argument("--steps", type=int, default=4, help="training steps measured per phase")
    p.add_argument("--workers", type=int, default=1, help="K: runs training at once")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    students = min(args.students, 30)
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")

    from core.config import RunConfig
    from core.runs import pin_process
    from studio.app import manager_for
    from studio.machine import detect_machine
    from studio.access import Policy, load_accounts

    work = Path(tempfile.mkdtemp(prefix="aha-classroom-"))
    runs_dir = work / "runs"
    names = [f"student{i:02d}" for i in range(1, students + 1)]
    users = {"users": {n: {"password": f"pw-{n}", "role": "student"} for n in names},
             "limits": {"concurrent_runs": args.workers}}
    users["users"]["teacher"] = {"password": "pw-teacher", "role": "teacher"}
    (work / "users.yaml").write_text(json.dumps(users))
    csv_path = work / "questions.csv"
    csv_path.write_text("question,answer\n" + "".join(f"What is {i} + {i}?,{2 * i}\n"
                                                       for i in range(50)))

    # each student's run, queued as the Start button queues it
    accounts, limits = load_accounts(work / "users.yaml")
    policy = Policy("classroom", runs_dir, accounts, limits)
    # the server's own manager settings (a core kept for the pages), as its Start button would
    manager = manager_for(policy, detect_machine())
    cfg = RunConfig.load(ROOT / "examples" / "01-classroom-demo.yaml")
    cfg.train.max_steps = 1000
    refs = {}
    trainers = []
    for name in names:
        user = policy.user_named(name)
        run_dir = manager.create(cfg, parent=user.runs_dir)
        refs[name] = run_dir.name
        if manager.submit(run_dir, owner=name) == 0:
            trainers.append(run_dir)

    # the simulated browsers stand in for machines of their own: they share the server's
    # core(s), never the workers' (pessimistic for the latency, neutral for the training)
    pin_process(manager.server_cpus)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "app.py", "--classroom", str(work / "users.yaml"),
                               "--port", str(port), "--runs-dir", str(runs_dir)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict = {}
    try:
        wait_http(url, server)
        first = trainers[0]
        if not wait_steps(first, 2, 900):  # loading and the first steps are not measured
            raise SystemExit("the training run did not start: " + str(first / "worker.log"))
        alone = wait_steps(first, args.steps, 900)

        stop = threading.Event()
        latencies = {k: [] for k in ("sign_in", "upload", "show_run", "tick", "runs_list")}
        errors: list[str] = []
        threads = [threading.Thread(target=student, args=(url, n, f"pw-{n}", refs[n], stop,
                                                          latencies, errors, str(csv_path)),
                                    daemon=True) for n in names]
        for t in threads:
            t.start()
        joined = time.time()
        while sum(len(latencies["show_run"]) for _ in [0]) + len(errors) < students and \
                time.time() - joined < 300:
            time.sleep(1)
        loaded = wait_steps(first, args.steps, 900)
        stop.set()
        for t in threads:
            t.join(30)

        watch = latencies["tick"] + latencies["runs_list"] + latencies["show_run"]
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count()},
            "students": students, "training_workers": args.workers,
            "server_cpus": manager.server_cpus, "worker_cpus": manager.worker_cpus,
            "config": "examples/01-classroom-demo.yaml",
            "step_time_alone_s": statistics.median(alone) if alone else None,
            "step_time_with_students_s": statistics.median(loaded) if loaded else None,
            "steps_alone": alone, "steps_with_students": loaded,
            "latency": {k: summary(v) for k, v in latencies.items() if v},
            "watch_p95_ms": summary(watch)["p95_ms"] if watch else None,
            "errors": errors[:20], "error_count": len(errors),
        }
        if alone and loaded:
            result["slowdown"] = round(statistics.median(loaded) / statistics.median(alone), 3)
        result["targets"] = {"watch_p95_under_1s": bool(watch) and
                             result["watch_p95_ms"] < 1000,
                             "slowdown_at_most_1.3": result.get("slowdown", 99) <= 1.3}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        for run_dir in list(runs_dir.glob("users/*/runs/*")):
            pid = manager.pid(run_dir)
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        log.close()
    out = Path(args.out or ROOT / "bench" / "results" / "classroom_load_cpu.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("steps_alone",
                                                                   "steps_with_students")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
