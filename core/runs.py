"""Run directories and the worker processes that train in them.

A run directory holds everything about a run (config.yaml, events.jsonl, checkpoints/, adapter/,
worker.log, worker.pid), so any process can rebuild the list of runs and their states from disk:
closing a browser tab or restarting the server loses nothing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .events import read_events

# Touched to ask a worker to stop after its step (the trainer checks for it). Defined here, not
# in the trainer, so that watching runs never imports the trainer and torch.
STOP_FILE = "STOP"
PID_FILE = "worker.pid"
LOG_FILE = "worker.log"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunStatus:
    run_dir: Path
    name: str
    state: str          # created | loading_* | ready | training | stopped | finished | failed | interrupted
    step: int
    max_steps: int | None
    message: str
    alive: bool
    error: str | None = None
    traceback: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def worker_command(run_dir: Path, max_steps: int | None = None, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "core", "train", str(run_dir / "config.yaml"),
           "--run-dir", str(run_dir)]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    if resume:
        cmd.append("--resume")
    return cmd


def _pid_alive(pid: int) -> bool:
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
    """Creates run directories and owns their worker processes, one per run."""

    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._procs: dict[Path, subprocess.Popen] = {}

    def create(self, cfg: RunConfig) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = self.root / f"{stamp}-{_slug(cfg.name)}"
        n = 2
        while run_dir.exists():
            run_dir = self.root / f"{stamp}-{_slug(cfg.name)}-{n}"
            n += 1
        run_dir.mkdir(parents=True)
        cfg.save(run_dir / "config.yaml")
        return run_dir

    def start(self, run_dir: str | Path, max_steps: int | None = None, resume: bool = False) -> int:
        run_dir = Path(run_dir).resolve()
        if self.is_alive(run_dir):
            raise RuntimeError("This run is already training.")
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        log = open(run_dir / LOG_FILE, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        # A session of its own: the worker outlives the UI process and a closed browser tab.
        proc = subprocess.Popen(worker_command(run_dir, max_steps, resume), cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        (run_dir / PID_FILE).write_text(str(proc.pid))
        self._procs[run_dir] = proc
        return proc.pid

    def stop(self, run_dir: str | Path) -> None:
        """Ask the worker to finish its current step, checkpoint and exit."""
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
        return pid is not None and _pid_alive(pid)

    def status(self, run_dir: str | Path) -> RunStatus:
        run_dir = Path(run_dir)
        events, _ = read_events(run_dir)
        state, message, step, max_steps, error, tb = "created", "Not started", 0, None, None, None
        for e in events:
            if e["type"] == "status":
                state, message = e.get("state", state), e.get("message", message)
                max_steps = e.get("max_steps", max_steps)
                if state != "failed":  # a resumed run leaves its old error behind
                    error = tb = None
            elif e["type"] == "metrics":
                step, max_steps = e.get("step", step), e.get("max_steps", max_steps)
            elif e["type"] == "error":
                state, error, tb = "failed", e.get("message"), e.get("traceback")
                message = error
        alive = self.is_alive(run_dir)
        if not alive and state not in ("created", "stopped", "finished", "failed"):
            state, message = "interrupted", "The worker ended without finishing; resume it."
        try:
            name = RunConfig.load(run_dir / "config.yaml").name
        except Exception:
            name = run_dir.name
        return RunStatus(run_dir, name, state, step, max_steps, message, alive, error, tb)

    def list(self) -> list[RunStatus]:
        dirs = sorted((p for p in self.root.iterdir() if (p / "config.yaml").exists()),
                      key=lambda p: p.name, reverse=True)
        return [self.status(p) for p in dirs]
