"""Following a run from its events: fold new events into a small per-browser record.

Pure functions of plain data: the timer handler reads the events written since the last offset
(`core.events.read_events`) and folds them in here; charts, progress and samples render from
the record. Nothing here touches the worker.
"""
from __future__ import annotations

import html
import re
import textwrap
import threading
import time
from pathlib import Path

import yaml

from core.engine_choice import REASONS
from core.health import MIN_GENERATIONS, MIN_TEMPERATURE, STABLE_LR_MAX
from core.runs import STOP_FILE

from .errors import said_text
from .form import template_title
from .i18n import current, t

MAX_SAMPLE_STEPS = 3   # the samples panel shows the latest few steps
MAX_WARNINGS = 20      # collapse warnings kept per run (the panel shows the newest few)


def new_watch(run_dir: str | None = None) -> dict:
    return {"run_dir": run_dir, "offset": 0, "metrics": [], "samples": [], "warnings": [],
            "evals": [], "state": "created",
            "message": t("watch.state.created"), "engine": None, "device": None, "step": 0,
            "max_steps": None, "error": None, "traceback": None, "started": None}


def fold_events(watch: dict, events: list[dict], offset: int) -> dict:
    """A new record with `events` applied; `offset` is where reading continues."""
    w = dict(watch, metrics=list(watch["metrics"]), samples=list(watch["samples"]),
             warnings=list(watch.get("warnings", [])), evals=list(watch.get("evals", [])),
             offset=offset)
    for e in events:
        kind = e.get("type")
        if kind == "status":
            w["state"], w["message"] = e.get("state", w["state"]), e.get("message", w["message"])
            w["max_steps"] = e.get("max_steps", w["max_steps"])
            w["engine"] = e.get("engine", w["engine"])
            w["engine_reason"] = e.get("engine_reason", w.get("engine_reason"))
            w["engine_why"] = e.get("engine_why", w.get("engine_why"))
            w["vllm_mode"] = e.get("vllm_mode", w.get("vllm_mode"))
            w["device"] = e.get("device", w["device"])
            if w["state"] == "training":
                w["started"] = {"time": e.get("time"), "step": e.get("step", w["step"])}
            if w["state"] != "failed":
                w["error"] = w["traceback"] = w["said"] = None
        elif kind == "metrics":
            if "reward_group_std" not in e and "reward_std" in e:  # runs from before the rename
                e = {**e, "reward_group_std": e["reward_std"]}
            _put_by_step(w["metrics"], e)
            w["step"], w["max_steps"] = e.get("step", w["step"]), e.get("max_steps", w["max_steps"])
        elif kind == "eval":
            _put_by_step(w["evals"], e)
        elif kind == "warning":
            w["warnings"] = [x for x in w["warnings"]
                             if (x.get("step"), x.get("code")) != (e.get("step"), e.get("code"))]
            w["warnings"] = (w["warnings"] + [e])[-MAX_WARNINGS:]
        elif kind == "samples":
            w["samples"] = (w["samples"] + [e])[-MAX_SAMPLE_STEPS:]
        elif kind == "error":
            w["state"], w["error"], w["traceback"] = "failed", e.get("message"), e.get("traceback")
            w["message"], w["said"] = w["error"], e.get("said")
    return w


def _put_by_step(items: list[dict], event: dict) -> None:
    """Append a per-step event, replacing one of the same step: a step trained again after a
    resume from an earlier checkpoint shows once, with its newest values."""
    step = event.get("step")
    for i in range(len(items) - 1, -1, -1):
        if items[i].get("step") == step:
            items[i] = event
            del items[i + 1:]  # later steps were trained on a branch the resume replaced
            return
        if (items[i].get("step") or 0) < (step or 0):
            break
    items.append(event)


# ---- charts ---------------------------------------------------------------------------

CHARTS = {  # chart id -> metric keys (a key ending in '/*' expands to every reward template)
    "Reward": ["reward", "rewards/*/mean"],
    "Loss": ["loss"],
    "KL to the base model": ["kl"],
    "Completion length (tokens)": ["completions/mean_length"],
    "Reward spread in a group (std)": ["reward_group_std"],
}
# chart id -> its texts' keys: `<key>.title` (the chart's title, the same as its label on the
# page) and `<key>.axis` (the title of its vertical axis)
CHART_KEYS = {
    "Reward": "chart.reward",
    "Loss": "chart.loss",
    "KL to the base model": "chart.kl",
    "Completion length (tokens)": "chart.length",
    "Reward spread in a group (std)": "chart.spread",
}
KL_CHART = "KL to the base model"
_TEMPLATE_KEY = re.compile(r"rewards/(.+)/mean\Z")


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric, skipping steps where it was missing or null."""
    xs, ys = [], []
    for m in metrics:
        value = m.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(m.get("step"))
            ys.append(float(value))
    return xs, ys


HELDOUT_LINE = "held-out questions (greedy)"
LINE_KEYS = {  # line name -> the key of its name in the legend (reward templates keep theirs)
    "total": "chart.line.total",
    HELDOUT_LINE: "chart.line.heldout",
    "loss": "chart.line.loss",
    "kl": "chart.line.kl",
    "completions/mean_length": "chart.line.length",
    "reward_group_std": "chart.line.spread",
}


def chart_data(metrics: list[dict], evals: list[dict] = ()) -> dict[str, dict[str, tuple[list, list]]]:
    """Chart id -> line name -> (steps, values). Held-out evaluations (`train.eval_steps`)
    join the reward chart as one more line."""
    templates = []
    for m in metrics:
        for k in m:
            match = _TEMPLATE_KEY.match(k)
            if match and match.group(1) not in templates:
                templates.append(match.group(1))
    out: dict[str, dict] = {}
    for title, keys in CHARTS.items():
        lines = {}
        for key in keys:
            if key == "rewards/*/mean":
                for name in templates:
                    lines[name] = series(metrics, f"rewards/{name}/mean")
            else:
                lines["total" if key == "reward" else key] = series(metrics, key)
        if title == "Reward" and evals:
            lines[HELDOUT_LINE] = series(list(evals), "total")
        out[title] = lines
    return out


class ChartCache:
    """The charts of a run at a given number of steps, built once and shared by every page
    watching it (building five plotly figures takes about 0.2 s of CPU that the training
    worker would otherwise lose, once per watcher and step). Least recently used goes first."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: dict = {}
        self._lock = threading.Lock()

    def figures(self, watch: dict) -> list:
        metrics, evals = watch["metrics"], watch.get("evals", [])
        key = (watch.get("run_dir"), len(metrics), metrics[-1].get("time") if metrics else None,
               len(evals), current())  # the titles are in the page's language
        with self._lock:
            hit = self._items.pop(key, None)
            if hit is not None:
                self._items[key] = hit
                return hit
        data = chart_data(metrics, evals)
        figs = [figure(title, data[title], note=chart_note(title, metrics)) for title in CHARTS]
        with self._lock:
            self._items[key] = figs
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))
        return figs


def chart_note(title: str, metrics: list[dict]) -> str | None:
    """A line written on a chart that stays empty for a reason: the KL chart of a run with
    beta 0 (no KL is computed then)."""
    if title == KL_CHART and metrics and not any(
            isinstance(m.get("kl"), (int, float)) and not isinstance(m.get("kl"), bool)
            for m in metrics):
        return t("chart.kl.no_beta")
    return None


def figure(title: str, lines: dict[str, tuple[list, list]], note: str | None = None):
    """One chart, by its id in CHARTS, in the page's language; `note` is written across it."""
    import plotly.graph_objects as go

    key = CHART_KEYS.get(title)
    fig = go.Figure()
    names = [line_name(name) for name in lines]
    for shown, (xs, ys) in zip(names, lines.values()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=shown))
    # the legend sits at the foot of the chart, under the axis title, with room for its rows
    # (about two names a row in a chart a third of the page wide); placed in the plot's own
    # coordinates it would cover the axis title. The chart grows by the legend's rows, so the
    # plot keeps its height however many rewards there are.
    legend_rows = _legend_rows(names) if len(lines) > 1 else 0
    last = max((x for xs, _ in lines.values() for x in xs if isinstance(x, (int, float))),
               default=0)
    if last <= 10:  # steps are whole numbers: no ticks at 0.5 while there are few of them
        fig.update_xaxes(tick0=0, dtick=1)
    fig.update_layout(title=t(f"{key}.title") if key else title, height=250 + 20 * legend_rows,
                      margin=dict(l=50, r=10, t=40, b=45 + 20 * legend_rows),
                      xaxis_title=t("chart.axis.step"),
                      yaxis_title=t(f"{key}.axis") if key else None,
                      showlegend=legend_rows > 0,
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0))
    if note:
        fig.add_annotation(text="<br>".join(textwrap.wrap(html.escape(note), 42)),
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=12, color="#6b7280"), align="center")
    return fig


def _legend_rows(names: list[str], width: float = 400.0) -> int:
    """Rows of a horizontal legend in a chart a third of the page wide: each entry is its
    symbol (about 40 px) and its text (about 7 px a character), packed in order."""
    rows, used = 1, 0.0
    for name in names:
        entry = 40 + 7 * len(name)
        if used and used + entry > width:
            rows, used = rows + 1, 0.0
        used += entry
    return rows


def line_name(name: str) -> str:
    """A line's name in the legend: ours in the page's language, a reward template by its title
    ("Right number"), a reward the user named by that name."""
    return t(LINE_KEYS[name]) if name in LINE_KEYS else template_title(name)


# ---- progress -------------------------------------------------------------------------

RUNNING = ("training", "ready", "resumed")  # states in which a worker is working on a step


def eta_seconds(watch: dict, now: float | None = None) -> float | None:
    """Remaining time: the steps left at the mean of recent step times (before the first step,
    at the estimate made before Start), less the time the current step has run already."""
    total, step = watch.get("max_steps"), watch.get("step", 0)
    times = [m["step_time"] for m in watch["metrics"][-10:]
             if isinstance(m.get("step_time"), (int, float))]
    per_step = sum(times) / len(times) if times else watch.get("estimate_step_s")
    if not total or not per_step or watch.get("state") not in RUNNING:
        return None
    left = (total - step) * per_step
    progress = watch.get("progress") or {}
    if progress.get("step") == step + 1 and progress.get("step_started"):
        ran = (now or time.time()) - progress["step_started"]
        left -= min(ran, per_step * 0.95)  # a slow step still leaves some of itself to run
    return max(0.0, left)


PHASES = ("generating", "scoring", "reference", "updating", "evaluating")  # watch.phase.<phase>


def number(n: int) -> str:
    """A whole number with the page language's thousands separator (1,234 or 1.234)."""
    return f"{n:,}".replace(",", t("watch.number.thousands"))


def phase_text(watch: dict) -> str:
    """What the worker is doing within the current step, from its progress file; empty when
    that is not news (no run training, or the file is from an earlier step)."""
    progress = watch.get("progress") or {}
    phase = progress.get("phase")
    if phase not in PHASES or watch.get("state") not in RUNNING:
        return ""
    if phase != "evaluating" and progress.get("step") != watch.get("step", 0) + 1:
        return ""
    words = t(f"watch.phase.{phase}")
    if phase == "generating" and isinstance(progress.get("tokens"), int):
        words += ": " + t("watch.phase.tokens_of", tokens=number(progress["tokens"]),
                          most=number(progress.get("of", 0)))
    elif phase == "updating" and progress.get("passes"):
        words += ": " + t("watch.phase.pass", n=min(progress.get("done", 0) + 1,
                                                    progress["passes"]),
                          passes=progress["passes"])
    elif phase == "evaluating" and isinstance(progress.get("tokens"), int):
        words += ": " + t("watch.phase.tokens", tokens=number(progress["tokens"]))
    return words


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return t("watch.duration.hours", h=h, m=f"{m:02d}")
    if m:
        return t("watch.duration.minutes", m=m, s=f"{s:02d}")
    return t("watch.duration.seconds", s=s)


# the states a run reports (core.runs); each has its words, `watch.state.<state>`, and its
# short form for the runs table, `runs.state.<state>`
STATES = ("created", "queued", "loading_data", "loading_model", "ready", "resumed", "training",
          "stopped", "finished", "failed", "interrupted")


def run_state_words(st) -> str:
    """The short words of a run's state (a core.runs.RunStatus), for the runs table and the
    run choices of step 5."""
    if st.state == "queued" and st.position:
        return t("runs.state.queued_at", position=st.position)
    return t(f"runs.state.{st.state}") if st.state in STATES else st.state


def state_words(state: str | None, default: str = "") -> str:
    """What a run in `state` is doing, in the page's language (`default` for a state we do
    not know)."""
    return t(f"watch.state.{state}") if state in STATES else default


def progress_html(watch: dict, text: bool = True) -> str:
    total, step = watch.get("max_steps") or 0, watch.get("step", 0)
    frac = min(1.0, step / total) if total else 0.0
    state = watch.get("state", "created")
    head = (f'<div class="aha-progress" data-state="{html.escape(state)}" data-step="{step}">'
            f'<div class="aha-bar"><div style="width:{frac * 100:.1f}%"></div></div>')
    if not text:  # the bar alone (the page as built, before it knows its language)
        return head + '<div class="aha-progress-text"></div></div>'
    words = state_words(state, state)
    colocated = watch.get("engine") == "vllm" and watch.get("vllm_mode") == "colocate"
    engine = html.escape(t("watch.progress.engine_colocated" if colocated else
                           "watch.progress.engine", engine=watch["engine"])) \
        if watch.get("engine") else ""
    if engine and watch.get("device"):
        engine += " " + html.escape(t("watch.progress.device", device=device_words(
            watch["device"])))
    why = engine_why_text(watch.get("engine_why"), watch.get("engine_reason"))
    if engine:  # why this engine: on hover (the settings' advice says it in full before Start)
        engine = (f' · <span class="aha-engine" title="{html.escape(why)}">{engine}</span>'
                  if why else f" · {engine}")
    phase = phase_text(watch)
    if phase:
        words = f"{words} · {phase}"
    stopping = state in RUNNING and watch.get("run_dir") and \
        (Path(watch["run_dir"]) / STOP_FILE).exists()
    if stopping:  # Stop was pressed: the step ends, then the run saves and stops
        words = t("watch.progress.stopping")
    eta = None if stopping else eta_seconds(watch)
    guess = " " + t("watch.progress.estimate") if eta is not None and not watch["metrics"] else ""
    eta_text = " · " + t("watch.progress.left", time=format_duration(eta)) + guess \
        if eta is not None else ""
    if state == "queued":
        words = t("watch.progress.queued", position=watch.get("position") or "?")
        start = watch.get("queue_eta")
        eta_text = " · " + t("watch.progress.starts_in", time=format_duration(start)) \
            if start is not None else ""
    return (f'{head}<div class="aha-progress-text">'
            f'{html.escape(t("watch.progress.step", step=step, total=total or "?"))} · '
            f'{html.escape(words)}{eta_text}{engine}</div></div>')


def device_words(device: str) -> str:
    """"cpu" or "cuda:0" as the page says it: the CPU, the GPU (GPU 2 of several)."""
    kind, _, index = str(device).partition(":")
    if kind == "cpu":
        return t("watch.device.cpu")
    if kind in ("cuda", "xpu", "mps"):
        return t("watch.device.gpu_n", n=int(index) + 1) if index.isdigit() and int(index) \
            else t("watch.device.gpu")
    return str(device)


_ETA_CACHE: dict = {}
_STEPS_CACHE: dict = {}
_ETA_LOCK = threading.Lock()
ETA_SECONDS = 10.0  # a waiting page asks every 2 s; the answer changes far more slowly


def queue_eta(manager, position: int, default_step_s: float = 20.0) -> float | None:
    """Seconds until the run at `position` in line may start: the running runs' remaining steps
    at their own recent pace, then the steps of the runs ahead in line, shared among the slots.
    The whole line is worked out once per ETA_SECONDS, so thirty waiting pages read the events
    once (each place on its own cost a class of 30 about half the server's time)."""
    key = str(manager.root)
    with _ETA_LOCK:  # pages that tick together: one works the line out, the others read it
        hit = _ETA_CACHE.get(key)
        now = time.monotonic()
        if not hit or now - hit[0] >= ETA_SECONDS or position > len(hit[1]):
            if len(_ETA_CACHE) > 1000:
                _ETA_CACHE.clear()
            hit = (now, _queue_etas(manager, default_step_s, at_least=position))
            _ETA_CACHE[key] = hit
    etas = hit[1]
    return etas[position - 1] if 0 < position <= len(etas) else None


def _queue_etas(manager, default_step_s: float, at_least: int = 0) -> list[float]:
    """The start estimate of every place in line (and of `at_least` places)."""
    from core.events import read_events

    remaining, pace = [], []
    for entry in manager.running():
        events, _ = read_events(entry["run_dir"])
        metrics = [e for e in events if e.get("type") == "metrics"]
        times = [m["step_time"] for m in metrics[-10:] if isinstance(m.get("step_time"), (int, float))]
        step_s = sum(times) / len(times) if times else default_step_s
        pace.append(step_s)
        total = entry.get("max_steps") or (metrics[-1].get("max_steps") if metrics else None)
        done = metrics[-1]["step"] if metrics else 0
        remaining.append(max(0, (total or done) - done) * step_s)
    step_s = sum(pace) / len(pace) if pace else default_step_s
    slots = max(1, manager.max_workers)
    first_free = min(remaining) if remaining and len(remaining) >= slots else 0.0
    waiting = manager.waiting()
    etas, ahead_s = [], 0.0
    for place in range(1, max(len(waiting), at_least) + 1):
        # steady text, not a new one a tick
        etas.append(round((first_free + ahead_s / slots) / 30) * 30)
        if place <= len(waiting):
            ahead_s += _planned_steps(waiting[place - 1]) * step_s
    return etas


def _planned_steps(entry: dict) -> int:
    if entry.get("max_steps"):
        return int(entry["max_steps"])
    path = Path(entry["run_dir"]) / "config.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return 40
    hit = _STEPS_CACHE.get(path)
    if hit and hit[0] == stamp:
        return hit[1]
    try:
        steps = int(yaml.safe_load(path.read_text())["train"]["max_steps"])
    except Exception:
        steps = 40
    if len(_STEPS_CACHE) > 5000:
        _STEPS_CACHE.clear()
    _STEPS_CACHE[path] = (stamp, steps)
    return steps


# ---- samples --------------------------------------------------------------------------

_PARTS = re.compile(r"(<(think|reasoning|answer)>)(.*?)(</\2>|\Z)", re.S | re.I)


def highlight(text: str) -> str:
    """Escaped completion text with reasoning and answer parts marked."""
    out, pos = [], 0
    for m in _PARTS.finditer(text or ""):
        out.append(html.escape(text[pos:m.start()]))
        cls = "aha-answer" if m.group(2).lower() == "answer" else "aha-think"
        out.append(f'<span class="{cls}">{html.escape(m.group(0))}</span>')
        pos = m.end()
    out.append(html.escape((text or "")[pos:]))
    return "".join(out)


def _score(value) -> str:
    return t("watch.samples.none") if value is None else f"{value:.2f}"


def samples_html(samples: list[dict], text: bool = True) -> str:
    """The newest steps' answers with their scores (`text` False: the empty panel with no
    words, as the page is built)."""
    if not samples:
        words = html.escape(t("watch.samples.empty")) if text else ""
        return f'<div class="aha-samples aha-empty">{words}</div>'
    blocks = []
    for event in reversed(samples):
        groups: dict[str, list[dict]] = {}
        for item in event.get("items", []):
            groups.setdefault(str(item.get("prompt")), []).append(item)
        for prompt, items in groups.items():
            answer = items[0].get("answer")
            rows = []
            for item in items:
                scores = " · ".join(f"{html.escape(str(k))}: {_score(v)}"
                                    for k, v in (item.get("rewards") or {}).items())
                cut = " " + html.escape(t("watch.samples.cut_off")) if item.get("truncated") else ""
                total = html.escape(t("watch.samples.total", score=_score(item.get("total"))))
                rows.append(f'<li><pre class="aha-completion">{highlight(str(item.get("completion", "")))}</pre>'
                            f'<div class="aha-scores">{total} · {scores}'
                            f'{cut}</div></li>')
            ref = (" · " + html.escape(t("watch.samples.reference")) +
                   f" <b>{html.escape(str(answer))}</b>") if answer else ""
            step = html.escape(t("watch.samples.step", step=event.get("step")))
            blocks.append(f'<div class="aha-sample"><div class="aha-prompt">{step}'
                          f'{ref}<br>{html.escape(prompt)}</div><ol>{"".join(rows)}</ol></div>')
    return f'<div class="aha-samples">{"".join(blocks)}</div>'


# ---- health ---------------------------------------------------------------------------

SHOWN_WARNINGS = 3


COACH_WINDOW = 8


def coach_notes(watch: dict) -> list[tuple[str, str]]:
    """Plain notes on the charts from the latest metrics: (code, text). Unlike warnings these
    are not faults, just what a beginner would ask about."""
    metrics = watch.get("metrics") or []
    if not metrics:
        return []
    recent = metrics[-COACH_WINDOW:]
    notes = []
    clipped = [m.get("completions/clipped_ratio") for m in recent
               if isinstance(m.get("completions/clipped_ratio"), (int, float))]
    # an untrained model often rambles past the limit at first: only a limit that keeps
    # cutting answers off is worth a note
    if len(clipped) >= 3 and sum(clipped) / len(clipped) > 0.5:
        notes.append(("cut_off", t("coach.cut_off")))
    if not any(isinstance(m.get("kl"), (int, float)) for m in metrics):
        notes.append(("no_kl", t("coach.no_kl")))
    if len(metrics) >= 2 * COACH_WINDOW:
        rewards = [m.get("reward") for m in metrics if isinstance(m.get("reward"), (int, float))]
        early = rewards[-2 * COACH_WINDOW:-COACH_WINDOW]
        late = rewards[-COACH_WINDOW:]
        if early and late and abs(sum(late) / len(late) - sum(early) / len(early)) < 0.02 and \
                max(late) - min(late) < 0.05:
            notes.append(("flat", t("coach.flat", steps=COACH_WINDOW)))
    notes.append(("loss", t("coach.loss")))
    return notes


# ---- what the worker says, in the page's language ------------------------------------------
# core writes its advice, warnings and engine choice in English, each with a code and the values
# in it; here they are said again from those. Events without them (runs from before, a tracker
# or vLLM failing with an error of its own) keep core's English words.

def _share(x) -> str:
    return f"{x:.0%}"


ADVICE = {  # setting -> (key of its advice, values of the fix)
    "train.learning_rate": ("advice.learning_rate", lambda: {}),
    "grpo.temperature": ("advice.temperature", lambda: {"low": f"{MIN_TEMPERATURE:g}"}),
    "grpo.num_generations": ("advice.num_generations", lambda: {"n": MIN_GENERATIONS}),
}


def advice_texts(a: dict) -> tuple[str, str]:
    """(message, fix) of one settings advice (core.health.settings_advice or its event)."""
    setting, value = a.get("setting"), a.get("value")
    if setting not in ADVICE or not isinstance(value, (int, float)):
        return str(a.get("message", "")), str(a.get("fix", ""))
    key, fix_values = ADVICE[setting]
    if setting == "train.learning_rate":
        how = "far_above" if value >= 10 * STABLE_LR_MAX else "above"
        message = t(f"{key}.{how}", value=f"{value:g}", limit=f"{STABLE_LR_MAX:g}")
    else:
        message = t(f"{key}.message", value=f"{value:g}")
    return message, t(f"{key}.fix", **fix_values())


def advice_line(a: dict) -> str:
    message, fix = advice_texts(a)
    return t("train.advice.line", message=message, fix=fix)


WARNING_VALUES = {  # code -> the values its texts need, from its event
    "entropy_collapse": lambda e: {"entropy": f"{e['entropy']:.2f}",
                                   "correctness": _share(e["correctness"])},
    "no_signal": lambda e: {"streak": e["streak"]},
    "reward_hacking": lambda e: {"reward": e["reward"],
                                 "targets": ", ".join(f"'{n}'" for n in e["targets"]),
                                 "before": _share(e["correctness_before"]),
                                 "after": _share(e["correctness_after"])},
    "correctness_falling": lambda e: {"peak": _share(e["peak"]),
                                      "correctness": _share(e["correctness"])},
    "easy_reward_only": lambda e: {"reward": e["reward"],
                                   "targets": " and ".join(f"'{n}'" for n in e["targets"]),
                                   "correctness": _share(e["correctness"])},
}


def warning_texts(e: dict) -> tuple[str, str]:
    """(message, fix) of a warning event in the page's language."""
    code = e.get("code")
    if code == "risky_setting":
        return advice_texts(e)
    try:
        values = WARNING_VALUES[code](e)
    except (KeyError, TypeError, ValueError):
        return str(e.get("message", "")), str(e.get("fix", ""))
    return t(f"health.{code}.message", **values), t(f"health.{code}.fix", **values)


def engine_why_text(why: dict | None, english: str | None = None) -> str:
    """Why the engine was chosen (core.engine_choice.pick_engine's code and values)."""
    if not isinstance(why, dict) or why.get("code") not in REASONS:
        return english or ""
    values = {k: number(v) if isinstance(v, int) else v for k, v in why.items() if k != "code"}
    try:
        return t(f"engine.why.{why['code']}", **values)
    except (KeyError, IndexError):
        return english or ""


def health_html(watch: dict) -> str:
    """The newest collapse warnings of the run, each with what to try, and the coach's notes;
    empty before the first step."""
    warnings = watch.get("warnings") or []
    notes = coach_notes(watch)
    if not warnings and not notes:
        return '<div class="aha-health aha-empty"></div>'
    parts = []
    if warnings:
        items = []
        for e in reversed(warnings[-SHOWN_WARNINGS:]):
            when = t("watch.health.step", step=e.get("step")) if e.get("step") \
                else t("watch.health.before")
            message, fix = warning_texts(e)
            items.append(f'<li data-code="{html.escape(str(e.get("code")))}"><b>'
                         f'{html.escape(when)}:</b> '
                         f'{html.escape(message)}<br><span class="aha-fix">'
                         f'{html.escape(t("watch.health.try", fix=fix))}'
                         f'</span></li>')
        more = len(warnings) - SHOWN_WARNINGS
        tail = f'<div class="aha-fix">{html.escape(t("watch.health.more", n=more))}</div>' \
            if more > 0 else ""
        parts.append(f'<div class="aha-health" role="status"><div class="aha-health-title">'
                     f'⚠️ {html.escape(t("watch.health.title"))}</div><ul>{"".join(items)}</ul>'
                     f'{tail}</div>')
    if notes:
        items = "".join(f'<li data-code="{code}">{html.escape(text)}</li>' for code, text in notes)
        parts.append(f'<div class="aha-coach"><div class="aha-health-title">💡 '
                     f'{html.escape(t("coach.title"))}</div><ul>{items}</ul></div>')
    return "".join(parts)


def status_line(watch: dict) -> str:
    if watch.get("state") == "failed":  # core's reason, in the page's language where it can
        return "❌ " + said_text(watch.get("said"), watch.get("error") or watch.get("message"))
    return state_words(watch.get("state"), watch.get("message") or "")

