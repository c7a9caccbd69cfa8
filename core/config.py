"""The run configuration: one typed tree, saved with every run.

Every knob has a default, a help text and (where it makes sense) bounds or choices, kept in the
dataclass field's metadata so the CLI, the studio's widgets and the validator read the same facts.
Unknown keys are errors, never silently ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for a beginner."""


def knob(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, factory: Any = None):
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    source: str = knob("default", "'default' for the embedded SmolLM2-135M-Instruct, a Hugging Face "
                       "model id, or a local folder.")
    precision: str = knob("4bit", "How the frozen base weights are stored: 4-bit NF4 (least memory), "
                          "16-bit, or 32-bit.", choices=("4bit", "16bit", "32bit"))
    lora_r: int = knob(16, "LoRA rank: size of the trainable adapter.", min=1, max=512)
    lora_alpha: int = knob(32, "LoRA alpha: scales the adapter's effect (often 2x the rank).",
                           min=1, max=1024)
    lora_dropout: float = knob(0.0, "Dropout on the adapter input.", min=0.0, max=0.9)
    target_modules: list[str] | str = knob("auto", "Which layers get adapters: 'auto' picks the "
                                           "attention and MLP projections of the architecture.")
    gradient_checkpointing: bool = knob(True, "Recompute activations in the backward pass to save "
                                        "memory.")
    chat_template: str | None = knob(None, "A Jinja chat template to use when the model has none "
                                     "(empty: a plain default one).")


@dataclass
class DataConfig:
    source: str = knob("builtin:arithmetic", "A CSV/TSV/JSON/JSONL/Parquet file, a Hugging Face "
                       "dataset id, or 'builtin:arithmetic'.")
    question_column: str | None = knob(None, "Column with the questions (empty: detect).")
    answer_column: str | None = knob(None, "Column with the reference answers (empty: detect).")
    system_column: str | None = knob(None, "Column with a per-row system prompt (optional).")
    system_prompt: str = knob("", "System prompt used for every question without its own.")
    max_rows: int | None = knob(None, "Use only the first N rows (empty: all).", min=1)
    split: str = knob("train", "Which split of a Hub dataset to use.")
    eval_share: float = knob(0.1, "Share of the distinct questions kept aside to test the model "
                             "on questions it never trained on (0: none).", min=0.0, max=0.5)
    eval_source: str | None = knob(None, "A separate file or Hub dataset to test on instead of "
                                   "a share of the training data (empty: use eval_share).")
    eval_split: str = knob("test", "Which split of eval_source to use when it is a Hub dataset.")


@dataclass
class RewardConfig:
    template: str = knob("numeric_match", "Reward template name.")
    weight: float = knob(1.0, "Weight of this reward in the total.", min=-100.0, max=100.0)
    params: dict = knob(None, "Template parameters.", factory=dict)
    name: str | None = knob(None, "Name shown in charts (default: the template name).")


@dataclass
class GRPOConfig:
    num_generations: int = knob(4, "Completions sampled per prompt (the group).", min=2, max=64)
    prompts_per_step: int = knob(4, "Distinct prompts per optimizer step.", min=1, max=256)
    gradient_accumulation_steps: int = knob(1, "Split each step's completions into this many "
                                            "micro-batches for the backward pass.", min=1, max=256)
    micro_batch_size: int | None = knob(None, "Completions in one forward/backward pass. Only "
                                        "memory and speed change, not the loss (empty: chosen "
                                        "from the sequence length).", min=1, max=4096)
    max_prompt_length: int = knob(256, "Prompts are cut (from the left) to this many tokens.",
                                  min=8, max=32768)
    max_completion_length: int = knob(64, "Longest completion, in tokens.", min=1, max=32768)
    temperature: float = knob(1.0, "Sampling temperature, used identically for the log-probs.",
                              min=0.05, max=5.0)
    top_p: float = knob(1.0, "Nucleus sampling.", min=0.01, max=1.0)
    top_k: int = knob(0, "Sample only from the k likeliest tokens (0: off).", min=0, max=100000)
    loss_type: str = knob("dapo", "How token losses are averaged.",
                          choices=("grpo", "bnpo", "dr_grpo", "dapo"))
    epsilon: float = knob(0.2, "Lower clipping range of the importance ratio.", min=0.0, max=10.0)
    epsilon_high: float | None = knob(None, "Upper clipping range (empty: same as epsilon).",
                                      min=0.0, max=10.0)
    importance_sampling_level: str = knob("token", "'token' (GRPO) or 'sequence' (GSPO).",
                                          choices=("token", "sequence"))
    beta: float = knob(0.0, "Weight of the KL penalty against the base model (0: off, no "
                       "reference pass).", min=0.0, max=10.0)
    scale_rewards: str = knob("group", "Divide advantages by the reward std of the group, of the "
                              "batch, or not at all.", choices=("group", "batch", "none"))
    num_iterations: int = knob(1, "Optimizer steps per generated batch (mu).", min=1, max=64)
    mask_truncated_completions: bool = knob(False, "Ignore completions cut off at the length limit.")
    logprob_chunk_size: int = knob(1024, "Tokens per chunk when computing log-probs (the "
                                   "vocabulary is split into tiles too).", min=16,
                                   max=1 << 20)


@dataclass
class TrainConfig:
    max_steps: int = knob(40, "Optimizer steps to run.", min=1, max=1_000_000)
    learning_rate: float = knob(1e-4, "Peak learning rate.", min=0.0, max=1.0)
    lr_scheduler: str = knob("constant", "Learning-rate schedule after warm-up.",
                             choices=("constant", "linear", "cosine"))
    warmup_steps: int = knob(0, "Steps of linear warm-up.", min=0, max=1_000_000)
    weight_decay: float = knob(0.0, "AdamW weight decay.", min=0.0, max=1.0)
    adam_beta1: float = knob(0.9, "AdamW beta1.", min=0.0, max=1.0)
    adam_beta2: float = knob(0.99, "AdamW beta2.", min=0.0, max=1.0)
    max_grad_norm: float = knob(1.0, "Clip the gradient norm to this (0: off).", min=0.0, max=1e6)
    optimizer: str = knob("adamw_8bit", "adamw_8bit (bitsandbytes) or adamw (torch).",
                          choices=("adamw_8bit", "adamw"))
    seed: int = knob(42, "Random seed for data order, sampling and initialisation.")
    save_steps: int = knob(10, "Save a checkpoint every N steps (0: only at the end).", min=0)
    keep_checkpoints: int = knob(2, "Checkpoints kept on disk, the newest (0: all). The final "
                                 "adapter is always kept.", min=0, max=1_000_000)
    sample_every: int = knob(1, "Log example completions every N steps.", min=1)
    threads: int | None = knob(None, "CPU threads for torch (empty: all cores).", min=1)
    eval_steps: int = knob(0, "Score the held-out questions (greedy) before training and every N "
                           "steps (0: off; `python -m core eval` does it after training).", min=0,
                           max=1_000_000)
    eval_max_questions: int = knob(50, "Most held-out questions scored in one evaluation.", min=1,
                                   max=100_000)
    stop_on_collapse: int = knob(0, "Stop when a collapse warning lasts this many steps, keeping "
                                 "the last checkpoint from before it as the adapter (0: warn "
                                 "only).", min=0, max=1_000_000)
    kernels: bool = knob(True, "Fused kernels: LoRA layers with hand-derived gradients (CPU and "
                         "GPU), Triton RMSNorm, RoPE, SwiGLU and log-probs on GPUs. Off: plain "
                         "peft and transformers, for comparison.")


@dataclass
class GenerationConfig:
    engine: str = knob("auto", "Generation engine: vLLM on a GPU where installed, else "
                       "transformers.", choices=("auto", "transformers", "vllm"))
    max_batch_size: int | None = knob(None, "Most sequences generated at once (empty: chosen "
                                      "from free memory).", min=1)
    fast_cpu_4bit: bool = knob(True, "On CPUs with AVX512-BF16, sample from a second copy of "
                               "the 4-bit weights in a faster layout (about 2x faster generation, "
                               "one more copy of the 4-bit weights in memory).")


@dataclass
class RunConfig:
    name: str = knob("run", "A short name for the run.")
    model: ModelConfig = knob(None, "", factory=ModelConfig)
    data: DataConfig = knob(None, "", factory=DataConfig)
    rewards: list[RewardConfig] = knob(None, "", factory=list)
    grpo: GRPOConfig = knob(None, "", factory=GRPOConfig)
    train: TrainConfig = knob(None, "", factory=TrainConfig)
    generation: GenerationConfig = knob(None, "", factory=GenerationConfig)

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict | None) -> "RunConfig":
        cfg = _build(cls, data or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file not found: {path}") from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"Config file {path} is not valid YAML{where}.") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"Config file {path} must hold a mapping of settings.")
        return cls.from_dict(data)

    def validate(self) -> None:
        _check_bounds(self, "")
        if self.grpo.epsilon_high is not None and self.grpo.epsilon_high < self.grpo.epsilon:
            raise ConfigError("grpo.epsilon_high must be at least grpo.epsilon.")
        completions = self.grpo.prompts_per_step * self.grpo.num_generations
        if completions % self.grpo.gradient_accumulation_steps:
            raise ConfigError(
                f"grpo.gradient_accumulation_steps ({self.grpo.gradient_accumulation_steps}) must "
                f"divide the completions per step ({completions} = prompts_per_step x "
                f"num_generations).")


def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"'{path or 'config'}' must be a mapping of settings.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown setting '{_join(path, unknown[0])}'; known settings here: "
                          f"{', '.join(fields)}.")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        where = _join(path, name)
        sub = _dataclass_of(f)
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, where)
        elif name == "rewards":
            if not isinstance(value, list):
                raise ConfigError("'rewards' must be a list of reward templates.")
            kwargs[name] = [_build(RewardConfig, item, f"rewards[{i}]")
                            for i, item in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, f, where)
    return cls(**kwargs)


def _dataclass_of(f: dataclasses.Field):
    sections = (ModelConfig, DataConfig, GRPOConfig, TrainConfig, GenerationConfig)
    return {c.__name__: c for c in sections}.get(str(f.type))


def _coerce(value: Any, f: dataclasses.Field, where: str) -> Any:
    """Turn YAML/CLI values into the field's type, with a one-line message when that fails."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"'{where}' needs a value.")
    try:
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
        if kind == "dict" and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        base = kind.split(" ")[0].split("|")[0]
        raise ConfigError(f"'{where}' should be a {_TYPE_WORDS.get(base, base)}, got "
                          f"{value!r}.") from None
    return value


_TYPE_WORDS = {"int": "whole number", "float": "number", "bool": "true/false", "str": "text"}


def _check_bounds(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = _join(path, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where)
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_bounds(item, f"{where}[{i}]")
            continue
        meta = f.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"'{where}' must be one of {', '.join(map(str, meta['choices']))}; "
                              f"got {value!r}.")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and value < lo:
                raise ConfigError(f"'{where}' must be at least {lo}; got {value}.")
            if hi is not None and value > hi:
                raise ConfigError(f"'{where}' must be at most {hi}; got {value}.")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` overrides (values parsed as YAML) and re-validate."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' should look like section.key=value.")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"Unknown setting '{dotted}'.")
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return RunConfig.from_dict(data)
