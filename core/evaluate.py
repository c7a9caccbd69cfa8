"""Did it learn? Score the base model and the trained adapter on questions training never saw.

`python -m core eval RUN_DIR` answers each held-out question greedily (and optionally k sampled
times at the training temperature) with the adapter off and on, scores the answers with the
run's own reward set and writes `RUN_DIR/eval.json`. The trainer calls `score_questions` on the
model it is training for `train.eval_steps`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as data_lib
from .config import RunConfig
from .events import EventLog

EVAL_FILE = "eval.json"

# What an evaluation is doing, by code: the English words here; the studio says each in the
# page's language (studio/locales, eval.step.<code>).
EVAL_STEPS = {
    "loading": "Loading the model and the held-out questions",
    "trained": "The trained model answers {n} questions",
    "base": "The base model answers the same {n} questions",
}


def build_reward_set(cfg: RunConfig, dataset):
    """The run's reward set: the configured terms, or the default proposed from the data."""
    from reward_templates import RewardSet, default_reward_set

    if cfg.rewards:
        items = []
        for r in cfg.rewards:
            item = {"template": r.template, "weight": r.weight, "params": dict(r.params or {})}
            if r.name:
                item["name"] = r.name
            items.append(item)
        return RewardSet.from_config(items)
    return default_reward_set([dataset[i] for i in range(min(20, len(dataset)))])


def prompt_ids(tokenizer, row: dict, max_prompt_length: int) -> list[int]:
    """A data row as chat-template token ids, cut from the left to max_prompt_length."""
    messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else [])
    messages.append({"role": "user", "content": row["question"]})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)[-max_prompt_length:]


@dataclass
class Scored:
    """Answers to a list of questions with their scores, k per question."""
    texts: list[list[str]]                       # [Q][k]
    totals: list[list[float]]                    # [Q][k]
    per_reward: dict[str, list[list[float | None]]]  # name -> [Q][k]
    correct: list[list[bool]] | None             # [Q][k], None without a correctness term

    def summary(self) -> dict:
        out = {"total": _mean(self.totals),
               "rewards": {name: _mean(v) for name, v in self.per_reward.items()}}
        if self.correct is not None:
            out["accuracy"] = _mean(self.correct)
        return out


def _mean(nested) -> float | None:
    flat = [float(x) for row in nested for x in row if x is not None]
    return float(np.mean(flat)) if flat else None


def score_questions(engine, tokenizer, rows: list[dict], rewards, cfg: RunConfig,
                    samples: int = 0) -> tuple[Scored, Scored | None]:
    """(greedy answers, k sampled answers at the training temperature or None), scored."""
    g = cfg.grpo
    prompts = [prompt_ids(tokenizer, r, g.max_prompt_length) for r in rows]
    greedy = engine.generate(prompts, 1, g.max_completion_length, 1.0, 1.0, 1)  # top-k 1
    out = [_score(rows, greedy.texts, 1, rewards)]
    if samples:
        sampled = engine.generate(prompts, samples, g.max_completion_length, g.temperature,
                                  g.top_p, g.top_k)
        out.append(_score(rows, sampled.texts, samples, rewards))
    else:
        out.append(None)
    return out[0], out[1]


def _score(rows, texts: list[str], k: int, rewards) -> Scored:
    questions = [r["question"] for r in rows for _ in range(k)]
    answers = [r["answer"] for r in rows for _ in range(k)]
    totals, per_reward = rewards.score(questions, texts, answers)
    best = rewards.correctness_best

    def per_question(values):
        return [list(values[i * k:(i + 1) * k]) for i in range(len(rows))]

    correct = None
    if best:
        right = [all(per_reward[name][i] is not None and per_reward[name][i] >= b - 1e-9
                     for name, b in best.items()) for i in range(len(texts))]
        correct = per_question(right)
    return Scored(per_question(texts), per_question(totals),
                  {name: per_question(v) for name, v in per_reward.items()}, correct)


def find_adapter(run_dir: Path, checkpoint: str | None) -> tuple[Path, str]:
    """(adapter folder, its label): a named checkpoint, else the final adapter, else the newest
    checkpoint."""
    from .trainer import ADAPTER_DIR, CHECKPOINTS_DIR, latest_checkpoint

    if checkpoint:
        name = Path(checkpoint).name  # a checkpoint name, never a path from outside the run
        path = run_dir / CHECKPOINTS_DIR / name
        if not (path / "adapter_model.safetensors").exists():
            found = sorted(p.name for p in (run_dir / CHECKPOINTS_DIR).glob("step-*"))
            raise data_lib.DataError(f"No checkpoint '{name}' in this run; there are: "
                                     f"{', '.join(found) or 'none'}.")
        return path, name
    if (run_dir / ADAPTER_DIR / "adapter_model.safetensors").exists():
        return run_dir / ADAPTER_DIR, "final"
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise data_lib.DataError("This run has no trained adapter yet: no checkpoint and no final "
                                 "adapter.")
    return latest, latest.name


def evaluate_run(run_dir: str | Path, checkpoint: str | None = None, split: str = "heldout",
                 samples: int = 0, max_questions: int | None = None,
                 threads: int | None = None, progress=lambda code, **values: None) -> dict:
    """Score base and trained on the run's held-out questions (or its training questions) and
    write eval.json. Returns what it wrote. `progress(code, **values)` hears each step
    (EVAL_STEPS)."""
    from .generation import TransformersEngine
    from .models import load_model

    run_dir = Path(run_dir)
    cfg = RunConfig.load(run_dir / "config.yaml")
    adapter, label = find_adapter(run_dir, checkpoint)  # before any slow work: fail fast
    if threads:
        torch.set_num_threads(threads)
    progress("loading")
    train, heldout = data_lib.prepare_run_data(cfg.data)
    if split == "heldout":
        if heldout is None:
            raise data_lib.DataError("This run has no held-out questions (data.eval_share is 0 and "
                                     "no data.eval_source); use --split train or set one.")
        table = heldout
    elif split == "train":
        table = data_lib.dedupe_questions(train)
    else:
        raise data_lib.DataError(f"Unknown split '{split}'; use heldout or train.")
    limit = max_questions or cfg.train.eval_max_questions
    rows = [table[i] for i in range(min(limit, table.num_rows))]
    rewards = build_reward_set(cfg, train)

    loaded = load_model(cfg.model, seed=cfg.train.seed, adapter_path=str(adapter),
                        fast_cpu_generation=cfg.generation.fast_cpu_4bit)
    model = loaded.model
    model.eval()
    engine = TransformersEngine(model, loaded.tokenizer, loaded.device,
                                cfg.generation.max_batch_size,
                                weights=loaded.generation_context)
    torch.manual_seed(cfg.train.seed)
    progress("trained", n=len(rows))
    trained = score_questions(engine, loaded.tokenizer, rows, rewards, cfg, samples)
    torch.manual_seed(cfg.train.seed)
    progress("base", n=len(rows))
    with model.disable_adapter():
        base = score_questions(engine, loaded.tokenizer, rows, rewards, cfg, samples)

    from .modelcard import adapter_stamp, collapse_note, write_model_card

    result = {
        "checkpoint": label, "adapter_stamp": adapter_stamp(adapter), "split": split,
        "questions": len(rows),
        "rewards": rewards.names, "correctness": sorted(rewards.correctness_best),
        "greedy": {"base": base[0].summary(), "trained": trained[0].summary()},
        "items": _items(rows, base[0], trained[0]),
    }
    if samples:
        result["sampled"] = {"samples": samples, "temperature": cfg.grpo.temperature,
                             "base": base[1].summary(), "trained": trained[1].summary()}
    (run_dir / EVAL_FILE).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    events = EventLog(run_dir)
    try:
        events.emit("evaluation", checkpoint=label, split=split, questions=len(rows),
                    base=result["greedy"]["base"], trained=result["greedy"]["trained"])
    finally:
        events.close()
    # the adapter's own card gets the figures, so every copy of it (zip, Hub) carries them
    write_model_card(adapter, run_dir, cfg, checkpoint=label,
                     note=collapse_note(run_dir) if label == "final" else "")
    return result


def _items(rows, base: Scored, trained: Scored) -> list[dict]:
    items = []
    for i, row in enumerate(rows):
        before, after = base.texts[i][0], trained.texts[i][0]
        item = {"question": row["question"], "answer": row["answer"],
                "base": {"completion": before, "total": base.totals[i][0]},
                "trained": {"completion": after, "total": trained.totals[i][0]},
                "changed": before.strip() != after.strip()}
        if base.correct is not None:
            item["base"]["correct"] = base.correct[i][0]
            item["trained"]["correct"] = trained.correct[i][0]
        items.append(item)
    return items
