"""The program that runs inside a sandbox process (see sandbox.py).

Started as ``python -I -S _sandbox_child.py`` in a fresh session, in an empty
temporary directory. It reads one JSON job from stdin, limits its own
resources, then forks one worker per unit of work. Each worker closes its
standard streams, installs an audit hook that refuses process creation,
sockets, ctypes, signals to other processes, raising its own limits and any
write outside the temporary directory, and only then runs the given code.
Workers report through a pipe, one JSON line per result; the supervisor kills
a worker that runs past its time and prints all results as one JSON object.

Only the standard library is used, and nothing here is imported by the server.
"""

import json
import os
import resource
import select
import signal
import sys
import time

MAX_REPORT_BYTES = 1_000_000


def _limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass


def _set_limits(limits):
    mb = 1024 * 1024
    _limit(resource.RLIMIT_AS, int(limits["memory_mb"]) * mb)
    _limit(resource.RLIMIT_FSIZE, int(limits["file_mb"]) * mb)
    _limit(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    _limit(resource.RLIMIT_CORE, 0)


def _make_guard(tmpdir, max_writes):
    """Build the audit hook; every value it needs is bound as a default argument."""
    blocked = frozenset(
        {
            "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill",
            "resource.setrlimit", "resource.prlimit", "sys.remote_exec", "pty.spawn",
        }
    )
    prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "_posixsubprocess.")
    blocked_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "subprocess"})
    # event name -> positions of path arguments that must stay inside tmpdir
    path_events = {
        "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,),
        "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,), "os.utime": (0,), "os.link": (0, 1),
        "os.symlink": (1,), "os.setxattr": (0,), "os.removexattr": (0,), "os.mkfifo": (0,),
        "os.mknod": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
        "shutil.move": (0, 1), "sqlite3.connect": (0,),
    }
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    inside = os.path.realpath(tmpdir)
    counter = [0]

    def guard(
        event, args,
        _blocked=blocked, _prefixes=prefixes, _imports=blocked_imports, _paths=path_events,
        _write_flags=write_flags, _inside=inside, _sep=os.sep, _realpath=os.path.realpath,
        _fsdecode=os.fsdecode, _isdir=os.path.isdir, _counter=counter, _max=max_writes,
    ):
        if event in _blocked or event.startswith(_prefixes):
            raise PermissionError(f"blocked in the sandbox: {event}")
        if event == "import":
            name = args[0] if args else ""
            if name in _imports or str(name).startswith("ctypes."):
                raise PermissionError(f"blocked in the sandbox: import {name}")
            return
        if event == "object.__setattr__":
            if len(args) > 1 and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
                raise PermissionError("blocked in the sandbox: replacing a function's code")
            return

        def outside(path):
            if isinstance(path, int) or path is None:
                return False  # an already open file descriptor
            try:
                full = _realpath(_fsdecode(path))
            except Exception:
                return True
            return full != _inside and not full.startswith(_inside + _sep)

        if event == "open":
            path = args[0] if args else None
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _write_flags
            )
            if writing:
                if outside(path):
                    raise PermissionError(f"blocked in the sandbox: writing {path!r}")
                _counter[0] += 1
                if _counter[0] > _max:
                    raise PermissionError("blocked in the sandbox: too many files written")
            elif outside(path) and not isinstance(path, int) and _isdir(_fsdecode(path)):
                raise PermissionError("blocked in the sandbox: opening a folder outside the work folder")
            return
        where = _paths.get(event)
        if where:
            for i in where:
                if i < len(args) and outside(args[i]):
                    raise PermissionError(f"blocked in the sandbox: {event} {args[i]!r}")

    return guard


def _one_line(exc):
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:200]


def _run_tests(unit, emit):
    import ast

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(unit["code"], "<completion>", "exec"), ns)
    except BaseException as exc:  # SystemExit too: the code did not run through
        emit({"ran": False, "passed": 0, "total": 0, "error": _one_line(exc)})
        return
    try:
        statements = ast.parse(unit["tests"], "<tests>").body
    except BaseException as exc:
        emit({"ran": True, "passed": 0, "total": 0, "error": "the tests do not parse: " + _one_line(exc)})
        return
    passed, error = 0, ""
    for stmt in statements:
        try:
            exec(compile(ast.Module(body=[stmt], type_ignores=[]), "<tests>", "exec"), ns)
            passed += 1
        except BaseException as exc:
            error = error or _one_line(exc)
    emit({"ran": True, "passed": passed, "total": len(statements), "error": error})


def _run_reward(unit, emit):
    ns = {"__name__": "reward_module", "__builtins__": __builtins__}
    try:
        exec(compile(unit["source"], "<your reward>", "exec"), ns)
        fn = ns["reward"]
    except BaseException as exc:
        emit({"fatal": _one_line(exc)})
        return
    for row in unit["rows"]:
        try:
            value = fn(row[0], row[1], row[2])
        except BaseException as exc:
            emit({"error": _one_line(exc)})
            continue
        if value is None:
            emit({"value": None})
        elif isinstance(value, (int, float)):
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                emit({"error": f"returned {value}, which is not a finite number"})
            else:
                emit({"value": value})
        else:
            emit({"error": f"returned {type(value).__name__}, expected a number or None"})


def _worker(unit, mode, job, write_fd):
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    _limit(resource.RLIMIT_CPU, max(1, int(job["limits"]["cpu_s"])))
    out = os.fdopen(write_fd, "w", buffering=1)
    nonce = job["nonce"]

    def emit(result, _out=out, _nonce=nonce):
        _out.write(_nonce + json.dumps(result) + "\n")

    sys.addaudithook(_make_guard(job["tmpdir"], int(job["limits"]["max_writes"])))
    runner = _run_tests if mode == "tests" else _run_reward
    try:
        runner(unit, emit)
        out.flush()
    finally:
        os._exit(0)


def _collect(pid, read_fd, nonce, timeout_s):
    """Lines the worker reported before it ended or ran out of time, and why it stopped."""
    deadline = time.monotonic() + timeout_s
    data, timed_out = b"", False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        if len(data) < MAX_REPORT_BYTES:
            data += chunk
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    os.close(read_fd)
    results = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce):
            try:
                results.append(json.loads(line[len(nonce):]))
            except ValueError:
                pass
    if timed_out:
        stop = f"took longer than {timeout_s:g} s and was stopped"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        stop = "ran out of CPU time" if sig in (signal.SIGKILL, signal.SIGXCPU) else f"was killed by signal {sig}"
    else:
        stop = ""
    return results, stop


def main():
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    _set_limits(job["limits"])
    mode = job["mode"]
    report = []
    for unit in job["units"]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _worker(unit, mode, job, write_fd)
        os.close(write_fd)
        results, stop = _collect(pid, read_fd, job["nonce"], float(job["limits"]["timeout_s"]))
        report.append({"results": results, "stop": stop})
    sys.stdout.write(json.dumps({"units": report}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
