"""Run directories and the worker processes that train in them.

A run directory holds everything about a run (config.yaml, events.jsonl, checkpoints/, adapter/,
worker.log, worker.pid), so any process can rebuild the list of runs and their states from disk:
closing a browser tab or restarting the server loses nothing.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .events import EVENTS_FILE, read_events, write_atomic

# Touched to ask a worker to stop after its step (the trainer checks for it). Defined here, not
# in the trainer, so that watching runs never imports the trainer and torch.
STOP_FILE = "STOP"
PID_FILE = "worker.pid"
QUEUE_FILE = "queue.json"
LOG_FILE = "worker.log"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict:
    """The environment for a Python child of this project (`python -m core...`, `studio...`):
    this one, unbuffered, with the project on PYTHONPATH, plus `extra`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class RunStatus:
    run_dir: Path
    name: str
    state: str          # created | queued | loading_* | ready | training | stopped | finished | failed | interrupted
    step: int
    max_steps: int | None
    message: str
    alive: bool
    error: str | None = None
    traceback: str | None = None
    position: int | None = None  # place in the line while it waits to start
    said: dict | None = None  # the error's message id and values (core.cli.said_of)


def _newer(a: Path, b: Path) -> bool:
    """Whether file a was written after file b (False when either is missing)."""
    try:
        return a.stat().st_mtime_ns > b.stat().st_mtime_ns
    except OSError:
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_process(cpus) -> bool:
    """Keep every thread of this process, and so every thread and child it starts later, on
    `cpus`. Linux only; False where it could not."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    done = False
    for tid in tasks:
        try:
            os.sched_setaffinity(tid, set(cpus))
            done = True
        except OSError:
            continue  # a thread that ended meanwhile
    return done


def pin_from_env() -> None:
    """In a worker: the CPUs its run manager gave it (AHA_TRAIN_CPUS), before any thread."""
    text = os.environ.get("AHA_TRAIN_CPUS")
    if text:
        try:
            pin_process([int(c) for c in text.split(",") if c.strip()])
        except ValueError:
            pass


def free_port() -> int:
    """A TCP port on loopback no one listens on now (for the processes of one run to meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_prefix(processes: int = 1, port: int | None = None,
                  sharded: bool = False) -> list[str]:
    """The start of the command that runs a module on `processes` processes: python itself for
    one; accelerate launch for several (one machine, data parallel; on a machine without GPUs
    --multi_gpu still starts them all, on the CPU with gloo, where --cpu would start one).
    `sharded`: FSDP (--use_fsdp, FSDP2) instead of whole copies of the model."""
    if processes <= 1:
        return [sys.executable, "-m"]
    kind = ["--use_fsdp", "--fsdp_version", "2"] if sharded else ["--multi_gpu"]
    return [sys.executable, "-m", "accelerate.commands.launch", *kind,
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port or free_port()), "-m"]


def run_processes(run_dir: Path) -> int:
    """How many processes the run's config asks to train it (1 when it cannot be read)."""
    try:
        return RunConfig.load(Path(run_dir) / "config.yaml").train.processes
    except Exception:  # a broken config fails in the worker, with its one-line reason
        return 1


def colocated_python(run_dir: Path) -> str | None:
    """The Python of the vLLM environment when the run asks for vLLM inside its training process
    (generation.vllm_mode colocate, engine not transformers) and this Python has no vLLM; else
    None (this Python trains it)."""
    from .engine_choice import vllm_importable, vllm_python
    try:
        gen = RunConfig.load(Path(run_dir) / "config.yaml").generation
    except Exception:  # a broken config fails in the worker, with its one-line reason
        return None
    if gen.vllm_mode != "colocate" or gen.engine == "transformers" \
            or vllm_importable():
        return None
    return vllm_python()


def worker_command(run_dir: Path, max_steps: int | None = None, resume: bool = False,
                   processes: int | None = None) -> list[str]:
    processes = run_processes(run_dir) if processes is None else processes
    cmd = launch_prefix(processes) + ["core", "train", str(run_dir / "config.yaml"),
                                      "--run-dir", str(run_dir)]
    python = colocated_python(run_dir) if processes <= 1 else None
    if python:
        cmd[0] = python
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    if resume:
        cmd.append("--resume")
    return cmd


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunManager:
    """Creates run directories and owns their worker processes, one per run, and the queue.

    At most `max_workers` workers train at once; further runs wait first-in first-out in
    `<root>/queue.json`, which survives a restart of the server. Memory admission: a run starts
    only when its memory estimate fits beside the estimates of the runs already training (a run
    alone always starts: the page asked for a second yes when it will not fit).
    """

    def __init__(self, root: str | Path = "runs", max_workers: int | None = None,
                 memory_budget: float | None = None, reserve_cores: int = 0):
        self.root = Path(root)
        # CPU threads per worker whose run leaves train.threads empty: with reserve_cores the
        # cores the server needs to answer pages stay free. On 2 cores, a worker using both
        # while a class of 30 watched took 793 s for a step that took 23-26 s alone (the
        # server's requests preempt one of its two threads and the other waits at every
        # parallel section); None leaves torch's default (all cores).
        cpus = usable_cpus()
        cores = len(cpus)
        self.worker_threads = (max(1, (cores - reserve_cores) // (max_workers or
                                                                   default_max_workers()))
                               if reserve_cores else None)
        # ...and the two never share a core: the server (and what it starts for its pages)
        # stays on the first ones (`pin_process`), workers train on the others
        # (AHA_TRAIN_CPUS, applied by the worker before it starts a thread)
        split = bool(reserve_cores) and cores > reserve_cores
        self.server_cpus = cpus[:reserve_cores] if split else []
        self.worker_cpus = cpus[reserve_cores:] if split else []
        self.root.mkdir(parents=True, exist_ok=True)
        self._procs: dict[Path, subprocess.Popen] = {}
        self.max_workers = max_workers or default_max_workers()
        self.memory_budget = memory_budget
        self._lock = threading.RLock()
        self._scheduler: threading.Thread | None = None

    def create(self, cfg: RunConfig, parent: str | Path | None = None) -> Path:
        """A new run folder (in `parent`, default the root) named after the time and the run's
        name as a slug: never a path taken from the name."""
        parent = Path(parent) if parent is not None else self.root
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = parent / f"{stamp}-{_slug(cfg.name)}"
        n = 2
        while run_dir.exists():
            run_dir = parent / f"{stamp}-{_slug(cfg.name)}-{n}"
            n += 1
        run_dir.mkdir(parents=True)
        cfg.save(run_dir / "config.yaml")
        return run_dir

    def start(self, run_dir: str | Path, max_steps: int | None = None, resume: bool = False) -> int:
        """Start a worker now, whatever the queue holds (the CLI and tests; the studio submits)."""
        run_dir = Path(run_dir).resolve()
        if self.is_alive(run_dir):
            raise RuntimeError("This run is already training.")
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        log = open(run_dir / LOG_FILE, "ab")
        env = child_env()
        if self.worker_threads:
            env["AHA_TRAIN_THREADS"] = str(self.worker_threads)
        if self.worker_cpus:
            env["AHA_TRAIN_CPUS"] = ",".join(map(str, self.worker_cpus))
        # A session of its own: the worker outlives the UI process and a closed browser tab.
        proc = subprocess.Popen(worker_command(run_dir, max_steps, resume), cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        (run_dir / PID_FILE).write_text(str(proc.pid))
        self._procs[run_dir] = proc
        return proc.pid

    # ---- the queue ------------------------------------------------------------------------
    def submit(self, run_dir: str | Path, owner: str = "local", resume: bool = False,
               memory: float | None = None, max_steps: int | None = None) -> int:
        """Queue a run; it starts at once when a slot and the memory allow. Returns its place in
        the line: 0 when it started, 1 when it is next, ..."""
        run_dir = Path(run_dir).resolve()
        with self._lock, self._queue() as q:
            if self.is_alive(run_dir):
                raise RuntimeError("This run is already training.")
            if any(e["run_dir"] == str(run_dir) for e in q["waiting"]):
                raise RuntimeError("This run is already waiting to start.")
            (run_dir / STOP_FILE).unlink(missing_ok=True)
            q["waiting"].append({"run_dir": str(run_dir), "owner": owner, "resume": resume,
                                 "memory": memory, "max_steps": max_steps,
                                 "queued": time.time()})
            self._schedule(q)
        return self.position(run_dir) or 0

    def cancel(self, run_dir: str | Path) -> bool:
        """Take a waiting run out of the line; False when it was not waiting."""
        run_dir = str(Path(run_dir).resolve())
        with self._lock, self._queue() as q:
            before = len(q["waiting"])
            q["waiting"] = [e for e in q["waiting"] if e["run_dir"] != run_dir]
            return len(q["waiting"]) < before

    def position(self, run_dir: str | Path) -> int | None:
        """1 for the next run to start, ...; None when the run is not waiting."""
        run_dir = str(Path(run_dir).resolve())
        for i, e in enumerate(self.waiting(), start=1):
            if e["run_dir"] == run_dir:
                return i
        return None

    def waiting(self) -> list[dict]:
        return list(self._read_queue()["waiting"])

    def running(self) -> list[dict]:
        """The runs the queue started whose workers are still alive."""
        return [e for e in self._read_queue()["running"] if self.is_alive(e["run_dir"])]

    def schedule(self) -> list[Path]:
        """Start the waiting runs that fit now; returns the ones started."""
        with self._lock, self._queue() as q:
            return self._schedule(q)

    def _schedule(self, q: dict) -> list[Path]:
        q["running"] = [e for e in q["running"] if self.is_alive(e["run_dir"])]
        started = []
        while q["waiting"] and len(q["running"]) < self.max_workers:
            entry = q["waiting"][0]
            used = sum(e.get("memory") or 0.0 for e in q["running"])
            if q["running"] and self.memory_budget and entry.get("memory") and \
                    used + entry["memory"] > self.memory_budget:
                break  # first in, first out: the head waits for memory, nobody jumps it
            q["waiting"].pop(0)
            run_dir = Path(entry["run_dir"])
            if not (run_dir / "config.yaml").exists():
                continue  # deleted while it waited
            try:
                self.start(run_dir, entry.get("max_steps"), entry.get("resume", False))
            except RuntimeError:
                continue  # already training (started by hand)
            q["running"].append(dict(entry, started=time.time()))
            started.append(run_dir)
        return started

    def start_scheduler(self, interval: float = 2.0, chores=()) -> None:
        """A daemon thread that starts waiting runs as workers end (and runs `chores`, small
        housekeeping callables, about once a minute)."""
        if self._scheduler is not None:
            return

        def loop():
            last = time.monotonic()
            while True:
                time.sleep(interval)
                try:
                    self.schedule()
                except Exception:  # a bad queue file must not end the scheduler
                    pass
                if time.monotonic() - last > 60:
                    last = time.monotonic()
                    for chore in chores:
                        try:
                            chore()
                        except Exception:
                            pass

        self._scheduler = threading.Thread(target=loop, name="run-scheduler", daemon=True)
        self._scheduler.start()

    def _read_queue(self) -> dict:
        try:
            q = json.loads((self.root / QUEUE_FILE).read_text(encoding="utf-8"))
            if isinstance(q, dict) and isinstance(q.get("waiting"), list) and \
                    isinstance(q.get("running"), list):
                return q
        except (OSError, ValueError):
            pass
        return {"waiting": [], "running": []}

    @contextmanager
    def _queue(self):
        """The queue file, read and written under an exclusive lock (one server process at a
        time edits it; a second server on the same folder waits)."""
        with open(self.root / (QUEUE_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                q = self._read_queue()
                yield q
                write_atomic(self.root / QUEUE_FILE, json.dumps(q, indent=1))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---- one run ----------------------------------------------------------------------------
    def stop(self, run_dir: str | Path) -> None:
        """Ask the worker to finish its current step, checkpoint and exit; a waiting run leaves
        the line."""
        if not self.cancel(run_dir):
            (Path(run_dir) / STOP_FILE).touch()

    def wait(self, run_dir: str | Path, timeout: float | None = None) -> int | None:
        proc = self._procs.get(Path(run_dir).resolve())
        if proc is None:
            return None
        return proc.wait(timeout)

    def pid(self, run_dir: str | Path) -> int | None:
        try:
            return int((Path(run_dir) / PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def is_alive(self, run_dir: str | Path) -> bool:
        proc = self._procs.get(Path(run_dir).resolve())
        if proc is not None:
            return proc.poll() is None
        pid = self.pid(run_dir)
        return pid is not None and pid_alive(pid)

    def status(self, run_dir: str | Path, waiting: list[dict] | None = None) -> RunStatus:
        run_dir = Path(run_dir)
        events, _ = read_events(run_dir)
        state, message, step, max_steps, error, tb = "created", "Not started", 0, None, None, None
        said = None
        for e in events:
            if e["type"] == "status":
                state, message = e.get("state", state), e.get("message", message)
                max_steps = e.get("max_steps", max_steps)
                if state != "failed":  # a resumed run leaves its old error behind
                    error = tb = said = None
            elif e["type"] == "metrics":
                step, max_steps = e.get("step", step), e.get("max_steps", max_steps)
            elif e["type"] == "error":
                state, error, tb = "failed", e.get("message"), e.get("traceback")
                message, said = error, e.get("said")
        alive = self.is_alive(run_dir)
        place = None
        if not alive:
            key = str(run_dir.resolve())
            line = self.waiting() if waiting is None else waiting
            place = next((i for i, e in enumerate(line, start=1) if e["run_dir"] == key), None)
        if place is not None:
            state, message = "queued", f"Waiting to start: number {place} in line."
        elif not alive and state not in ("created", "stopped", "finished", "failed"):
            state, message = "interrupted", "The worker ended without finishing; resume it."
        elif alive and state in ("stopped", "finished", "failed") and \
                _newer(run_dir / PID_FILE, run_dir / EVENTS_FILE):
            # resumed: its worker started after the last event and has written nothing yet
            state, message = "created", "Starting"
        try:
            name = RunConfig.load(run_dir / "config.yaml").name
        except Exception:
            name = run_dir.name
        return RunStatus(run_dir, name, state, step, max_steps, message, alive, error, tb,
                         place, said)

    def run_dirs(self, folders: list[str | Path] | None = None) -> list[Path]:
        """The run folders in these folders (default: the root), newest first (their names
        start with the time); nothing of a run is read but that its config exists."""
        dirs = []
        for folder in folders if folders is not None else [self.root]:
            folder = Path(folder)
            if folder.is_dir():
                dirs += [p for p in folder.iterdir() if (p / "config.yaml").exists()]
        return sorted(dirs, key=lambda p: p.name, reverse=True)

    def list(self, folders: list[str | Path] | None = None) -> list[RunStatus]:
        """The runs in these folders (default: the root), newest first."""
        waiting = self.waiting()
        return [self.status(p, waiting) for p in self.run_dirs(folders)]


def default_max_workers() -> int:
    """Training workers at once: one per GPU, else one per four CPU cores (at least one)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return max(1, len([d for d in visible.split(",") if d.strip()]))
    return max(1, (os.cpu_count() or 1) // 4)
