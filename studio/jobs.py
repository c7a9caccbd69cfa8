"""Run model work (`studio.infer`) in a child process and follow its progress lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


class JobError(RuntimeError):
    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


def run_job(request: dict, timeout: float = 900) -> Iterator[tuple[str, object]]:
    """Yields ("progress", text) while the child works, then ("result", value).

    Raises JobError with a one-line message when the child fails, dies or takes too long.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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
            elif "result" in msg:
                yield "result", msg["result"]
                return
            elif "error" in msg:
                raise JobError(msg["error"], msg.get("traceback"))
        code = proc.wait(timeout=timeout)
        raise JobError(f"The model process stopped unexpectedly (exit code {code}); it may have "
                       f"run out of memory.")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_job_quietly(request: dict, timeout: float = 900) -> object:
    for kind, value in run_job(request, timeout):
        if kind == "result":
            return value
    raise JobError("The model process gave no result.")
