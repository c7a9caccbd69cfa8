"""The training queue with real worker processes: K at once, first in first out, kept across a
restart of the server, cancellable, and memory admission counting the runs already going."""
import time

from core.events import read_events
from core.runs import RunManager
from tests.test_trainer import tiny_config


def wait_for(predicate, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def steps_of(run_dir):
    return [e["step"] for e in read_events(run_dir)[0] if e["type"] == "metrics"]


def test_one_at_a_time_in_order_across_a_restart(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.train.max_steps = 10_000  # trains until stopped
    manager = RunManager(tmp_path, max_workers=1)
    runs = [manager.create(cfg) for _ in range(3)]
    assert [manager.submit(r, owner="s") for r in runs] == [0, 1, 2]
    assert manager.is_alive(runs[0]) and not manager.is_alive(runs[1])
    assert [manager.status(r).state for r in runs[1:]] == ["queued", "queued"]
    assert [manager.status(r).position for r in runs[1:]] == [1, 2]
    assert wait_for(lambda: steps_of(runs[0])), (runs[0] / "worker.log").read_text()[-2000:]

    # the server restarts: a new manager reads the same line from disk
    restarted = RunManager(tmp_path, max_workers=1)
    assert [e["run_dir"] for e in restarted.waiting()] == [str(r.resolve()) for r in runs[1:]]
    assert restarted.schedule() == []  # the first still trains: nobody jumps in
    assert restarted.cancel(runs[2]) and restarted.position(runs[2]) is None
    assert restarted.status(runs[2]).state == "created"

    restarted.stop(runs[0])
    assert wait_for(lambda: not restarted.is_alive(runs[0]))
    assert restarted.schedule() == [runs[1].resolve()]
    assert wait_for(lambda: steps_of(runs[1]))
    assert restarted.waiting() == [] and not restarted.is_alive(runs[2])
    restarted.stop(runs[1])
    assert wait_for(lambda: not restarted.is_alive(runs[1]))
    assert manager.status(runs[0]).state == "stopped"
    # resumed, it counts as starting at once, before its worker has written anything (the
    # page's banner names it), and as stopped again once it has stopped
    manager.start(runs[0], resume=True)
    assert manager.status(runs[0]).state == "created"
    manager.stop(runs[0])
    assert wait_for(lambda: not manager.is_alive(runs[0]))
    assert manager.status(runs[0]).state == "stopped"


def test_memory_admission_counts_runs_already_going(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.train.max_steps = 10_000
    manager = RunManager(tmp_path, max_workers=3, memory_budget=10.0)
    a, b, c = (manager.create(cfg) for _ in range(3))
    assert manager.submit(a, memory=6.0) == 0          # alone: always starts
    assert manager.submit(b, memory=6.0) == 1          # 6 + 6 > 10: waits, though a slot is free
    assert manager.submit(c, memory=1.0) == 2          # first in, first out: no jumping ahead
    assert manager.is_alive(a) and not manager.is_alive(b) and not manager.is_alive(c)
    manager.stop(a)
    assert wait_for(lambda: not manager.is_alive(a))
    assert set(manager.schedule()) == {b.resolve(), c.resolve()}  # 6 + 1 fits
    for run in (b, c):
        manager.stop(run)
    assert wait_for(lambda: not manager.is_alive(b) and not manager.is_alive(c))


def test_a_shared_server_keeps_a_core_for_its_pages(tiny_model_dir, tmp_path):
    """Workers of a manager that reserves a core train on the others, unless the run says."""
    import os

    cfg = tiny_config(tiny_model_dir)
    cfg.train.threads = None  # the run leaves it to the machine
    cfg.train.max_steps = 1
    for reserve, expected in ((1, max(1, (os.cpu_count() or 1) - 1)), (0, os.cpu_count())):
        manager = RunManager(tmp_path / str(reserve), max_workers=1, reserve_cores=reserve)
        run = manager.create(cfg)
        manager.start(run)

        def ready():
            return [e for e in read_events(run)[0] if e["type"] == "status"
                    and e.get("state") == "ready"]
        assert wait_for(ready), (run / "worker.log").read_text()[-2000:]
        assert ready()[0]["threads"] == expected
        # and on other cores than the server's: the two never share one
        cpus = sorted(os.sched_getaffinity(0))
        assert ready()[0]["cpus"] == (cpus[reserve:] if len(cpus) > 1 else cpus)
        assert wait_for(lambda: not manager.is_alive(run))
