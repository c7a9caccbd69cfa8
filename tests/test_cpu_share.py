"""How many threads the chat's llama.cpp answers take (core.gguf_chat.CpuShare): the cores other
processes keep busy now, not a minute ago, leaving out work at lowered priority and the model
process's own."""
import os
import subprocess
import sys
import time

import pytest

from core.gguf_chat import CpuShare

SPIN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"


def _settled(share: CpuShare, seconds: float = 3.0) -> float:
    time.sleep(seconds)  # the average spans about 2 s
    return share.busy


def test_other_work_counts_now_and_stops_counting_when_it_ends():
    share = CpuShare()
    try:
        before = _settled(share)
        if before > os.cpu_count() - 1:
            pytest.skip(f"other work keeps {before:.1f} of {os.cpu_count()} cores busy: one more "
                        f"busy process could not show")
        hog = subprocess.Popen([sys.executable, "-c", SPIN])
        try:
            busy = _settled(share)
        finally:
            hog.kill()
            hog.wait()
        assert busy > before + 0.6, (before, busy)  # one core taken by another process
        after = _settled(share, 4.0)
        assert after < busy - 0.6, (busy, after)  # gone within seconds of the work ending
    finally:
        share.close()


def test_work_at_lowest_priority_and_the_process_own_work_do_not_count():
    share = CpuShare()
    try:
        before = _settled(share)
        hog = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", SPIN])
        try:
            niced = _settled(share)
        finally:
            hog.kill()
            hog.wait()
        end = time.time() + 3
        while time.time() < end:  # this process's own work (the answers it writes)
            pass
        own = share.busy
        assert niced < before + 0.3 and own < before + 0.3, (before, niced, own)
    finally:
        share.close()


def test_threads_leave_out_the_busy_cores_but_never_go_below_one():
    share = CpuShare()
    share.close()
    cores = len(os.sched_getaffinity(0))
    share.busy = 0.0
    assert share.threads(cores) == cores and share.threads(1) == 1
    share.busy = float(os.cpu_count())  # every core busy
    assert share.threads(cores) == 1
