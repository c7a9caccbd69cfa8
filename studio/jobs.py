"""Run model work (`studio.infer`) in a child process and follow its progress lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from core.runs import child_env

from .i18n import current, t

ROOT = Path(__file__).resolve().parent.parent


class JobError(RuntimeError):
    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


def run_job(request: dict, timeout: float = 900) -> Iterator[tuple[str, object]]:
    """Yields ("progress", text) while the child works, then ("result", value).

    Raises JobError with a one-line message when the child fails, dies or takes too long.
    """
    env = child_env(TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "studio.infer"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdin.write(json.dumps(request))
        proc.stdin.close()
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # library chatter on stdout
            if "progress" in msg:
                yield "progress", msg["progress"]
            elif "partial" in msg:
                yield "partial", msg["partial"]
            elif "result" in msg:
                yield "result", msg["result"]
                return
            elif "error" in msg:
                raise JobError(msg["error"], msg.get("traceback"))
        code = proc.wait(timeout=timeout)
        raise JobError(t("jobs.died", code=code))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_job_quietly(request: dict, timeout: float = 900) -> object:
    for kind, value in run_job(request, timeout):
        if kind == "result":
            return value
    raise JobError(t("jobs.no_result"))


class WarmWorker:
    """A `python -m studio.infer --serve` process that keeps its model loaded between requests;
    one request at a time."""

    def __init__(self):
        env = child_env(TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "studio.infer", "--serve"], cwd=ROOT,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.key = None          # the model it last served
        self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: dict, timeout: float = 900) -> Iterator[tuple[str, object]]:
        deadline = time.monotonic() + timeout
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise JobError(t("jobs.stopped")) from None
        result, error = None, None
        for line in self.proc.stdout:
            if time.monotonic() > deadline:
                self.close()
                raise JobError(t("jobs.too_long"))
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # library chatter on stdout
            if "progress" in msg:
                yield "progress", msg["progress"]
            elif "partial" in msg:  # the answers so far (a request with "stream")
                yield "partial", msg["partial"]
            elif "result" in msg:
                result = msg["result"]
            elif "error" in msg:
                error = JobError(msg["error"], msg.get("traceback"))
            elif msg.get("done"):
                self.last_used = time.monotonic()
                if error is not None:
                    raise error
                yield "result", result
                return
        code = self.proc.wait()
        raise JobError(t("jobs.died", code=code))

    def close(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()


def model_key(request: dict) -> tuple:
    return (request.get("source") or "default", request.get("precision") or "4bit",
            request.get("dynamic_keep_share", 0.1), request.get("chat_template") or None)


class JobPool:
    """At most `size` model jobs (try it, chat, merge, model checks) at once for the whole
    server; further clicks wait their turn with a message, up to `wait` seconds, then give up.
    No number of people clicking at once can load more models than this.

    Answers (try it, chat) go to warm workers that keep their model loaded, so only the first
    question waits for a load; a worker idle for `idle` seconds is ended and frees its memory.
    Model checks and merges run in a process of their own that ends with the job."""

    def __init__(self, size: int, wait: float = 600.0, idle: float = 600.0):
        self.size = max(1, int(size))
        self.wait, self.idle = wait, idle
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle_workers: list[WarmWorker] = []
        self.busy = 0
        self._loading: dict[tuple, threading.Event] = {}  # model key -> its preload ends

    def preload(self, request: dict, timeout: float = 900) -> Iterator[tuple[str, object]]:
        """Load a chat request's model and adapter in a warm worker before its first question
        (`request` without questions), like run() but only when a slot is free right now and
        nobody is loading that model already: yields nothing otherwise. A question for the
        model waits for its preload instead of loading it a second time."""
        key = model_key(request)
        with self._lock:
            # only on an idle pool: a preload never slows an answer being written
            if self.busy or key in self._loading or not self._slots.acquire(blocking=False):
                return
            self._loading[key] = threading.Event()
        try:  # the slot taken here is the job's
            yield from self.run({**request, "questions": []}, timeout, preloading=True)
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def run(self, request: dict, timeout: float = 900, preloading: bool = False
            ) -> Iterator[tuple[str, object]]:
        """The job inside a slot: yields ("progress", text) while waiting and working."""
        request = {"lang": current(), **request}  # the child speaks the page's language
        deadline = time.monotonic() + self.wait
        if not preloading and request.get("job", "generate") == "generate":
            with self._lock:
                loading = self._loading.get(model_key(request))
            while loading is not None and not loading.wait(timeout=2.0):
                if time.monotonic() > deadline:
                    raise JobError(t("jobs.busy"))
                yield "progress", t("chat.progress.loading_model")
        while not preloading and not self._slots.acquire(timeout=2.0):  # a preload holds one
            if time.monotonic() > deadline:
                raise JobError(t("jobs.busy"))
            yield "progress", t("jobs.waiting", busy=self.size)
        with self._lock:
            self.busy += 1
        try:
            if request.get("job", "generate") != "generate":
                yield from run_job(request, timeout)
                return
            worker = self._take(model_key(request))
            try:
                yield from worker.ask(request, timeout)
                worker.key = model_key(request)
            except BaseException:
                worker.close()
                raise
            with self._lock:
                if worker.alive:
                    self._idle_workers.append(worker)
        finally:
            with self._lock:
                self.busy -= 1
            self._slots.release()

    def _take(self, key: tuple) -> WarmWorker:
        """An idle worker, the one holding this model if any; a new one when none is idle. The
        slots bound busy workers; idle ones beyond the slots are ended."""
        with self._lock:
            self._idle_workers = [w for w in self._idle_workers if w.alive]
            same = [w for w in self._idle_workers if w.key == key]
            processes = len(self._idle_workers) + self.busy - 1  # the others' jobs, and idle
            pick = same[0] if same else (self._idle_workers[0] if self._idle_workers and
                                         processes >= self.size else None)
            if pick is not None:
                self._idle_workers.remove(pick)
                return pick
        return WarmWorker()

    def reap(self) -> int:
        """End the workers idle for longer than `idle` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            old = [w for w in self._idle_workers if now - w.last_used > self.idle]
            self._idle_workers = [w for w in self._idle_workers if w not in old]
        for w in old:
            w.close()
        return len(old)

    def warm(self) -> int:
        with self._lock:
            return sum(1 for w in self._idle_workers if w.alive)

    def run_quietly(self, request: dict, timeout: float = 900) -> object:
        for kind, value in self.run(request, timeout):
            if kind == "result":
                return value
        raise JobError(t("jobs.no_result"))


def model_threads(training: bool, streamed: bool = False) -> int:
    """Threads for a model job: every core this server may use when nothing trains, half of
    them while a run trains next to it. A streamed answer leaves one core to the server and
    the browser that show it word by word: on 2 cores a chat answer pair took 4.6 s on one
    thread against 6.0 s on both with transformers (bench/beginner_latency.py). llama.cpp's
    chat writes the two answers of a pair on a thread each, which wait for nothing: it takes
    the unstreamed count (the request's "cores")."""
    from core.runs import usable_cpus

    cores = len(usable_cpus())
    if training:
        return max(1, cores // 2)
    return max(1, cores - 1) if streamed else cores


def default_job_slots(available_bytes: float, gpu: bool) -> int:
    """Model jobs at once: about one per 3 GB of free memory, between 1 and 4 (1 on a GPU)."""
    if gpu:
        return 1
    return max(1, min(4, int(available_bytes // (3 * 2**30))))


SCRATCH = Path(os.environ.get("AHA_SCRATCH") or Path(tempfile.gettempdir()) / "aha-studio-scratch")
SCRATCH_HOURS = 1.0


def scratch_dir(prefix: str) -> Path:
    """A fresh folder for a file the page is about to offer for download. Gradio copies what a
    handler returns into its own cache, so these are swept an hour later (`sweep_scratch`)."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def sweep_scratch(hours: float = SCRATCH_HOURS) -> int:
    """Delete scratch folders older than `hours`; returns how many."""
    import shutil

    if not SCRATCH.is_dir():
        return 0
    cutoff, gone = time.time() - hours * 3600, 0
    for path in SCRATCH.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                gone += 1
        except OSError:
            pass
    return gone
