"""The model card an adapter travels with: what it was trained from, on what, for which rewards,
with which settings, and how it did (the reward by step as an SVG chart, and the held-out
evaluation when there is one). Written in the Hugging Face model card format (YAML front matter
then Markdown), so the Hub shows it as it is."""
from __future__ import annotations

import html
import json
from pathlib import Path

import yaml

from .config import RunConfig
from .events import read_events

CHART_FILE = "reward.svg"


def reward_svg(steps: list[int], values: list[float], width: int = 480, height: int = 160) -> str:
    """A small line chart of the total reward by step, as standalone SVG."""
    pad = 28
    if not steps:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="10" y="20">no steps</text></svg>')
    lo, hi = min(values + [0.0]), max(values + [1e-9])
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def xy(step, value):
        x = pad + (step - x0) / (x1 - x0) * (width - 2 * pad)
        y = height - pad - (value - lo) / (hi - lo or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    points = " ".join(xy(s, v) for s, v in zip(steps, values))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
            f'stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" '
            f'stroke="#999"/>'
            f'<polyline fill="none" stroke="#f97316" stroke-width="2" points="{points}"/>'
            f'<text x="{pad}" y="{pad - 8}">total reward by step</text>'
            f'<text x="2" y="{height - pad + 4}">{lo:.2g}</text>'
            f'<text x="2" y="{pad + 4}">{hi:.2g}</text>'
            f'<text x="{pad}" y="{height - 8}">{x0}</text>'
            f'<text x="{width - pad - 12}" y="{height - 8}">{x1}</text></svg>')


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


# What the card is for: the adapter itself, the base with it merged in, or a GGUF file.
KINDS = {
    "adapter": ("peft", "a LoRA adapter for {base}", "Load it with peft on top of `{base}`."),
    "merged": ("transformers", "{base} with a GRPO-trained LoRA adapter merged in",
               "Load this folder with transformers' `AutoModelForCausalLM`; it needs no peft."),
    "gguf": ("gguf", "{base} with a GRPO-trained LoRA adapter merged in, as GGUF",
             "Run `{file}` in llama.cpp or LM Studio, or in Ollama with "
             "`ollama create NAME -f Modelfile`."),
}


def collapse_note(run_dir: str | Path) -> str:
    """Why the final adapter is an earlier one, when a collapse stopped the run (its status
    line), else ''."""
    events, _ = read_events(Path(run_dir))
    stops = [e for e in events if e["type"] == "status" and e.get("collapsed_at") is not None]
    return str(stops[-1].get("message", "")) if stops else ""


def _step_of(checkpoint: str) -> float:
    name = str(checkpoint)
    return int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else float("inf")


def adapter_stamp(adapter: str | Path) -> int | None:
    """Which adapter file this is, as it is now (its weights' modification time): an eval.json
    of an adapter trained again since (a resumed run) is not shown as this one's."""
    try:
        return (Path(adapter) / "adapter_model.safetensors").stat().st_mtime_ns
    except OSError:
        return None


def saved_evaluation(run_dir: str | Path, checkpoint: str = "final",
                     split: str | None = None) -> dict | None:
    """The run's eval.json (`python -m core eval`, or the studio's "Did it learn?") when it
    scored `checkpoint` as it is now (and on `split`, when given); None otherwise or when it
    cannot be read."""
    run_dir = Path(run_dir)
    try:
        result = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("checkpoint") != checkpoint \
            or not isinstance(result.get("greedy"), dict) \
            or (split is not None and result.get("split") != split):
        return None
    adapter = run_dir / ("adapter" if checkpoint == "final" else f"checkpoints/{checkpoint}")
    if "adapter_stamp" in result and result["adapter_stamp"] != adapter_stamp(adapter):
        return None
    return result


def write_model_card(adapter_dir: str | Path, run_dir: str | Path, cfg: RunConfig,
                     note: str = "", kind: str = "adapter", file: str = "",
                     checkpoint: str = "final") -> Path:
    """README.md (and reward.svg) for the adapter in `adapter_dir` (or, by `kind`, the merged
    model or GGUF file there), from the run's events and, when it scored this adapter
    (`checkpoint`: final or step-N), the run's eval.json."""
    from .config import public_base_id

    adapter_dir, run_dir = Path(adapter_dir), Path(run_dir)
    events, _ = read_events(run_dir)
    upto = _step_of(checkpoint)  # a checkpoint's card tells the run up to its step
    metrics = [e for e in events if e["type"] == "metrics" and e["step"] <= upto]
    evals = [e for e in events if e["type"] == "eval" and e["step"] <= upto]
    base = public_base_id(cfg.model.source)
    steps = [m["step"] for m in metrics]
    totals = [m.get("reward") for m in metrics]
    (adapter_dir / CHART_FILE).write_text(
        reward_svg([s for s, v in zip(steps, totals) if v is not None],
                   [v for v in totals if v is not None]), encoding="utf-8")

    names = [r.name or r.template for r in cfg.rewards]
    window = metrics[-min(8, len(metrics)):] if metrics else []
    first = metrics[:min(8, len(metrics))]
    library, title, how = KINDS[kind]
    front = {"base_model": base, "library_name": library,
             "tags": ["grpo", "lora", "aha-studio", "reinforcement-learning"]}
    if kind != "adapter":
        front["base_model_relation"] = "finetune"  # an adapter merged in is a fine-tune
        front["tags"].append(kind)
    data = cfg.data.source
    data_text = "the built-in arithmetic set" if data.startswith("builtin:") else \
        f"`{Path(data).name if Path(data).is_absolute() else data}`"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {html.escape(cfg.name)}: {title.format(base=base)}", "",
             f"Trained with GRPO in Aha Studio for {len(metrics)} steps on {data_text}. "
             f"{how.format(base=base, file=file)}", ""]
    if note:
        lines += [note, ""]
    lines += ["## Rewards", ""]
    for r in cfg.rewards:
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in (r.params or {}).items())
        lines.append(f"- `{r.name or r.template}` ({r.template}), weight {r.weight:g}"
                     f"{': ' + params if params else ''}")
    if not cfg.rewards:
        lines.append("- the default set proposed for the data")
    lines += ["", "## How it did", "", f"![reward by step]({CHART_FILE})", "",
              "| | first steps | last steps |", "|---|---|---|",
              f"| total reward | {_fmt(_mean(m.get('reward') for m in first))} | "
              f"{_fmt(_mean(m.get('reward') for m in window))} |"]
    for name in names:
        key = f"rewards/{name}/mean"
        lines.append(f"| {name} | {_fmt(_mean(m.get(key) for m in first))} | "
                     f"{_fmt(_mean(m.get(key) for m in window))} |")
    if evals:
        before, after = evals[0], evals[-1]
        lines += ["", f"On {after.get('questions')} held-out questions never trained on "
                  f"(greedy answers), at step {before.get('step')} and {after.get('step')}:", "",
                  "| | before | after |", "|---|---|---|",
                  f"| total reward | {_fmt(before.get('total'))} | {_fmt(after.get('total'))} |"]
        if "accuracy" in after:
            lines.append(f"| accuracy | {_fmt(before.get('accuracy'))} | "
                         f"{_fmt(after.get('accuracy'))} |")
    scored = saved_evaluation(run_dir, checkpoint)
    if scored:
        base, trained = scored["greedy"].get("base", {}), scored["greedy"].get("trained", {})
        which = ("held-out questions never trained on" if scored.get("split") == "heldout"
                 else "training questions")
        lines += ["", f"The base model and this adapter on {scored.get('questions')} {which} "
                  "(greedy answers, `python -m core eval`):", "",
                  "| | base model | trained |", "|---|---|---|"]
        if "accuracy" in trained:
            lines.append(f"| accuracy | {_fmt(base.get('accuracy'))} | "
                         f"{_fmt(trained.get('accuracy'))} |")
        lines.append(f"| total reward | {_fmt(base.get('total'))} | "
                     f"{_fmt(trained.get('total'))} |")
        for name, value in (trained.get("rewards") or {}).items():
            lines.append(f"| {name} | {_fmt((base.get('rewards') or {}).get(name))} | "
                         f"{_fmt(value)} |")
    g, t, m = cfg.grpo, cfg.train, cfg.model
    lines += ["", "## Settings", "",
              f"- LoRA r={m.lora_r}, alpha={m.lora_alpha} on a {m.precision} base",
              f"- {g.prompts_per_step} questions x {g.num_generations} answers per step, up to "
              f"{g.max_completion_length} tokens, temperature {g.temperature:g}",
              f"- loss {g.loss_type}, beta {g.beta:g}, learning rate {t.learning_rate:g} "
              f"({t.lr_scheduler}), seed {t.seed}",
              "", "The full settings are in `aha_config.yaml` beside this card.", ""]
    out = adapter_dir / "README.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    shared = RunConfig.from_dict(cfg.to_dict())  # nothing of this machine's paths travels
    shared.model.source = base
    for field in ("source", "eval_source"):
        value = getattr(shared.data, field)
        if value and Path(value).is_absolute():
            setattr(shared.data, field, Path(value).name)
    (adapter_dir / "aha_config.yaml").write_text(shared.to_yaml(), encoding="utf-8")
    return out
