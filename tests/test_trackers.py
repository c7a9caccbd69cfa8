"""Experiment trackers: a real (tiny) training run in the worker process logs to each tracker's
own library, offline, and what each recorded is read back with that library."""
import glob
import json
import struct
import sys

import pytest

from core.config import ConfigError, RunConfig
from core.events import read_events
from core.trackers import MODULES, check_installed
from tests.test_trainer import run_worker, tiny_config


def _train(tiny_model_dir, run_dir, trackers, steps=2, env=None, resume=False):
    cfg = tiny_config(tiny_model_dir)
    cfg.train.max_steps = steps
    cfg.train.report_to = trackers
    cfg.train.save_steps = 1
    cfg.data.eval_share = 0.2
    cfg.train.eval_steps = 2
    cfg.train.eval_max_questions = 2
    run_dir.mkdir(exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    result = run_worker(run_dir, *(["--resume"] if resume else []))
    assert result.returncode == 0, result.stderr[-2000:]
    events = read_events(run_dir)[0]
    by_step = {}
    for e in events:
        if e["type"] == "metrics":
            by_step[e["step"]] = e
    evals = [e for e in events if e["type"] == "eval"]
    return by_step, evals, events


def _wandb_history(run_dir):
    """History rows of an offline wandb run, read from its .wandb file: LevelDB-style log
    records (32 KiB blocks, 7-byte headers) holding wandb's own protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb
    rows = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data, pos, pending = open(path, "rb").read(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:
                pos += left
                continue
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                 for i in record.history.item})
    return rows


def _read(name, run_dir):
    """{metric: {step: value}} as the tracker stored it."""
    out: dict = {}
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    elif name == "wandb":
        for row in _wandb_history(run_dir):
            for k, v in row.items():
                if not k.startswith("_"):
                    out.setdefault(k, {})[row["_step"]] = v
    elif name == "trackio":
        import os
        import subprocess
        code = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
                "print(json.dumps(S.get_logs(sys.argv[1], sys.argv[2])))")
        env = dict(os.environ, TRACKIO_DIR=str(run_dir / "trackio"))
        proc = subprocess.run([sys.executable, "-c", code, "aha-studio", f"tiny-{run_dir.name}"],
                              capture_output=True, text=True, env=env, timeout=120)
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            for k, v in row.items():
                if k not in ("step", "timestamp"):
                    out.setdefault(k, {})[row["step"]] = v
    elif name == "mlflow":
        import os
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.tracking import MlflowClient
        client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
        state = json.loads((run_dir / "trackers.json").read_text())
        run = client.get_run(state["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.params["grpo.num_generations"] == "4"
        for key in run.data.metrics:
            out[key] = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return out


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "trackio", "mlflow"])
def test_tracker_records_what_the_events_say(tiny_model_dir, tmp_path, name):
    pytest.importorskip(MODULES[name])
    metrics, evals, events = _train(tiny_model_dir, tmp_path / name, [name])
    assert not [e for e in events if e["type"] == "warning" and e["code"] == "tracker_failed"]
    logged = _read(name, tmp_path / name)
    for key in ("reward", "loss", "entropy", "rewards/length_target/mean", "grad_norm"):
        assert logged[key].keys() == {1, 2}, key
        for step in (1, 2):
            assert logged[key][step] == pytest.approx(metrics[step][key], rel=1e-6, abs=1e-7)
    assert evals and logged["eval/total"][2] == pytest.approx(evals[-1]["total"])
    assert logged["eval/rewards/length_target"][0] == pytest.approx(evals[0]["rewards"]
                                                                     ["length_target"])


def test_resume_continues_the_same_tracker_run(tiny_model_dir, tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    _train(tiny_model_dir, run_dir, ["wandb"], steps=2)
    first = json.loads((run_dir / "trackers.json").read_text())
    metrics, _, _ = _train(tiny_model_dir, run_dir, ["wandb"], steps=3, resume=True)
    assert json.loads((run_dir / "trackers.json").read_text())["wandb_id"] == first["wandb_id"]
    logged = _read("wandb", run_dir)
    assert logged["reward"].keys() == {1, 2, 3}
    assert logged["reward"][3] == pytest.approx(metrics[3]["reward"])


def test_a_tracker_that_cannot_log_leaves_the_run_going(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    # a tracking server that is not there (a closed loopback port), asked not to retry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    metrics, _, events = _train(tiny_model_dir, tmp_path / "run", ["mlflow"])
    assert set(metrics) == {1, 2}
    failed = [e for e in events if e["type"] == "warning" and e["code"] == "tracker_failed"]
    assert len(failed) == 1 and failed[0]["message"].startswith("mlflow is not logging")
    assert "\n" not in failed[0]["message"]


def test_report_to_is_checked_in_one_line(monkeypatch):
    cfg = RunConfig.from_dict({"train": {"report_to": "tensorboard, wandb"}})
    assert cfg.train.report_to == ["tensorboard", "wandb"]
    assert RunConfig.from_dict({"train": {"report_to": "none"}}).train.report_to == []
    for bad in (["comet"], ["wandb", "wandb"]):
        with pytest.raises(ConfigError) as exc:
            RunConfig.from_dict({"train": {"report_to": bad}}).validate()
        assert "report_to" in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.setitem(MODULES, "wandb", "no_such_tracker_module")
    with pytest.raises(ConfigError) as exc:
        check_installed(["tensorboard", "wandb"])
    assert str(exc.value) == ("train.report_to names wandb, which is not installed here: "
                              "pip install wandb")
