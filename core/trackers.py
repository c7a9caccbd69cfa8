"""Experiment trackers (`train.report_to`): the run's events, sent through each tracker's own
library under the names they have in events.jsonl.

Each tracker listens to the run's EventLog: `metrics` events become scalars at their step,
`eval` events scalars under `eval/`, and the final `status` (finished, stopped, failed) closes
the tracker's run. Everything stays in the run folder unless the environment points elsewhere:

- tensorboard: `RUN/tensorboard` (torch's SummaryWriter; `tensorboard --logdir RUN/tensorboard`).
- wandb: `RUN/wandb`, offline unless `WANDB_MODE` says otherwise (`wandb sync RUN/wandb/offline-run-*`
  uploads later; with `WANDB_MODE=online` and a key it logs live).
- trackio: a local database in `RUN/trackio` unless `TRACKIO_DIR` is set (`trackio show`).
- mlflow: a file store in `RUN/mlruns` unless `MLFLOW_TRACKING_URI` is set (`mlflow ui
  --backend-store-uri RUN/mlruns`).

A resumed run continues the same tracker run (its id is kept in `RUN/trackers.json`). A tracker
that fails while logging is switched off with one `warning` event; training goes on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import string
from pathlib import Path
from typing import Any

from .config import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio",
            "mlflow": "mlflow-skinny"}
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio",
           "mlflow": "mlflow"}
STATE_FILE = "trackers.json"
FINAL_STATES = ("finished", "stopped", "failed")


class TrackerMissing(ConfigError):
    """A tracker named in train.report_to whose library is not installed."""


def check_installed(names: list[str]) -> None:
    import importlib.util
    missing = [n for n in names if importlib.util.find_spec(MODULES[n]) is None]
    if missing:
        raise TrackerMissing(
            f"train.report_to names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
            f" not installed here: pip install {' '.join(PACKAGES[n] for n in missing)}")


def flat_settings(cfg) -> dict[str, Any]:
    """The run's settings as flat `section.name` keys with plain values (lists and mappings as
    JSON text), the form every tracker accepts."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif isinstance(value, (list, dict)):
                out[key] = json.dumps(value if not isinstance(value, list) else [
                    dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value])
            else:
                out[key] = value
    walk(cfg, "")
    return out


def scalars(fields: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of an event (nested mappings joined with '/'); text, lists and nulls left out."""
    out = {}
    for key, value in fields.items():
        if key in ("type", "time", "step", "max_steps"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class _Tracker:
    name = ""

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, state: str) -> None:
        pass


class _TensorBoard(_Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, settings: dict, state: dict, step: int):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step: after a resume, what an earlier try logged beyond the checkpoint is dropped
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)
        if not step:
            self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in
                                                       settings.items()))

    def log(self, values, step):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, state):
        self.writer.close()


class _WandB(_Tracker):
    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, settings: dict, state: dict, step: int):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb
        mode = os.environ.get("WANDB_MODE") or "offline"
        # the run's id, kept so that a resume continues the same wandb run
        state.setdefault("wandb_id", "".join(secrets.choice(string.ascii_lowercase +
                                                            string.digits) for _ in range(8)))
        self.run = wandb.init(project=state["project"], name=run_name, id=state["wandb_id"],
                              resume="allow", dir=str(run_dir), mode=mode, config=settings)

    def log(self, values, step):
        self.run.log(values, step=step)

    def finish(self, state):
        self.run.finish(exit_code=0 if state != "failed" else 1)


class _Trackio(_Tracker):
    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, settings: dict, state: dict, step: int):
        # trackio reads TRACKIO_DIR once, when imported: this is the worker's own process
        os.environ.setdefault("TRACKIO_DIR", str(run_dir / "trackio"))
        import trackio
        self.trackio = trackio
        self.run = trackio.init(project=state["project"], name=run_name, config=settings,
                                resume="allow", embed=False, auto_log_cpu=False,
                                auto_log_gpu=False)

    def log(self, values, step):
        self.run.log(values, step=step)

    def finish(self, state):
        self.run.finish()


class _MLflow(_Tracker):
    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, settings: dict, state: dict, step: int):
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # mlflow-skinny has no database store; its file store keeps working when asked to
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        else:
            uri = os.environ["MLFLOW_TRACKING_URI"]
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(uri)
        if state.get("mlflow_run_id"):
            self.run_id = state["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(state["project"])
            exp_id = exp.experiment_id if exp else self.client.create_experiment(state["project"])
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            state["mlflow_run_id"] = self.run_id
            from mlflow.entities import Param
            self.client.log_batch(self.run_id, params=[
                Param(k, str(v)[:6000]) for k, v in settings.items()])

    def log(self, values, step):
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        # mlflow keys allow letters, digits and _-./ and spaces
        self.client.log_batch(self.run_id, metrics=[
            Metric(_mlflow_key(k), v, now, step) for k, v in values.items()])

    def finish(self, state):
        self.client.set_terminated(self.run_id, "FAILED" if state == "failed" else "FINISHED")


def _mlflow_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


KINDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio, "mlflow": _MLflow}


class Trackers:
    """The trackers of one run, fed by its EventLog (`events.listeners`)."""

    def __init__(self, names: list[str], run_dir: str | Path, cfg, step: int, events=None):
        self.run_dir = Path(run_dir)
        self.events = events
        self.trackers: list[_Tracker] = []
        self._step = step
        if not names:
            return
        check_installed(names)
        state_path = self.run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        state.setdefault("project", cfg.train.report_project)
        run_name = f"{cfg.name}-{self.run_dir.name}" if cfg.name else self.run_dir.name
        settings = flat_settings(cfg)
        for name in names:
            try:
                self.trackers.append(KINDS[name](self.run_dir, run_name, settings, state, step))
            except Exception as exc:  # a tracker server that is down never stops the training
                self._warn(name, exc)
        state_path.write_text(json.dumps(state, indent=1))
        if events is not None:
            events.listeners.append(self.on_event)

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if isinstance(event.get("step"), int):
            self._step = event["step"]
        if kind == "metrics":
            self._each(lambda t: t.log(scalars(event), event["step"]))
        elif kind == "eval":
            self._each(lambda t: t.log(scalars(event, "eval/"), event["step"]))
        elif kind == "status" and event.get("state") in FINAL_STATES:
            self.close(event["state"])

    def close(self, state: str = "finished") -> None:
        self._each(lambda t: t.finish(state))
        self.trackers = []

    def _each(self, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # a tracker never stops the training
                self.trackers.remove(tracker)
                self._warn(tracker.name, exc)

    def _warn(self, name: str, exc: Exception) -> None:
        if self.events is None:
            return
        text = str(exc).strip().splitlines()
        self.events.emit("warning", code="tracker_failed", step=self._step,
                         message=f"{name} is not logging this run: "
                                 f"{text[0][:200] if text else type(exc).__name__}",
                         fix="The run goes on; its charts are in the studio and events.jsonl.")
