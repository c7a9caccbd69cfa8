"""The run configuration: one typed tree, saved with every run.

Every knob has a default, a help text and (where it makes sense) bounds or choices, kept in the
dataclass field's metadata so the CLI, the studio's widgets and the validator read the same facts.
Unknown keys are errors, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .messages import MessageError

# The policy losses (core.grpo implements them, with TRL 1.16's meaning).
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")  # core.trackers drives them

# Limits on what a settings file (or an override, or a dict from the studio) may hold. They keep
# a hostile or mistaken file from freezing the server or flooding the browser: YAML anchors and
# aliases can expand a few hundred bytes into gigabytes, so they are refused outright.
MAX_SETTINGS_BYTES = 256 * 1024
MAX_DEPTH = 16            # nesting of mappings and lists, counted from the top of the file
MAX_TEXT_CHARS = 20_000   # one text value inside reward params
MAX_SETTING_CHARS = 100_000  # one text setting (a system prompt or chat template may be long)
MAX_PARAM_ITEMS = 10_000  # values inside one reward's params, all levels together
MAX_LIST_ITEMS = 1_000    # e.g. model.target_modules
MAX_INT = 2**53 - 1       # larger whole numbers lose precision in the browser (JSON)
MAX_REWARDS = 100


# The embedded model: the names a config may give it, and its Hub id as others know it.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_SOURCES = ("default", "", "embedded", "smollm2-135m-instruct")


def public_base_id(source: str) -> str:
    """The base model's name as someone else can load it: the Hub id of the embedded model, a
    Hub id as given, and a local folder by its name (its path means nothing elsewhere)."""
    source = str(source or "").strip()
    if source.lower() in DEFAULT_SOURCES:
        return EMBEDDED_HUB_ID
    if source.startswith(("/", ".", "~")) or os.path.isdir(source):
        return Path(source).name
    return source


# Every problem a settings file, a form or an override can have, as one line for a beginner:
# id -> English text. The studio says them in the page's language (`config.msg.<id>` in its
# catalogs, tests/test_config_messages.py keeps both complete); `{setting}` is a config path,
# which the studio names by its label.
MESSAGES = {
    "decimal_point": ".",
    "big_number": "a number with about {digits} digits",
    "what_file": "Config file {name}",
    "what_value": "The value of '{setting}'",
    "yaml_anchor": "Settings files may not use YAML anchors or aliases (& and *). Line {line} has one.",
    "too_deep_line": "Settings may be nested at most {depth} levels deep (line {line}).",
    "too_deep": "Settings may be nested at most {depth} levels deep.",
    "yaml_invalid_line": "{what} is not valid YAML (line {line}).",
    "yaml_invalid": "{what} is not valid YAML.",
    "yaml_digits": "{what} is not valid YAML (a number has too many digits).",
    "yaml_reason": "{what} is not valid YAML ({reason}).",
    "unusable": "These settings can't be used: {reason}",
    "file_not_found": "Config file not found: {name}",
    "file_folder": "'{name}' is a folder, not a settings file.",
    "file_unreadable": "Couldn't read config file {name}: {reason}.",
    "file_too_big": "Config file {name} is larger than {limit} KB; settings files are much "
                    "smaller. Is it really a settings file?",
    "file_not_utf8": "Config file {name} isn't UTF-8 text; is it really a settings file?",
    "file_not_mapping": "Config file {name} must hold a mapping of settings.",
    "epsilon_high": "{setting} must be at least {other}.",
    "report_to_unknown": "'{setting}' knows {known}; got {value}.",
    "report_to_twice": "'{setting}' names a tracker twice.",
    "vespo_mode": "{setting} vespo takes vLLM's correction per token: set {other} to "
                  "token_truncate or token_mask.",
    "cispo_epsilon": "{setting} cispo caps the importance weight at {other}: set it (5.0 is the "
                     "usual value).",
    "prompts_processes": "{setting} ({value}) must be a multiple of {other} ({processes}): each "
                         "process takes whole prompts.",
    "accumulation": "{setting} ({value}) must divide the completions per step ({completions} = "
                    "prompts_per_step x num_generations).",
    "accumulation_processes": "{setting} ({value}) must divide the completions per step of each "
                              "of the {processes} processes ({completions} = prompts_per_step x "
                              "num_generations / train.processes).",
    "not_mapping": "'{setting}' must be a mapping of settings.",
    "unknown_setting": "Unknown setting '{setting}'; known settings here: {known}.",
    "rewards_not_list": "'rewards' must be a list of reward templates.",
    "too_many_rewards": "'rewards' holds {count} rewards; at most {limit} are supported.",
    "needs_value": "'{setting}' needs a value.",
    "not_finite": "'{setting}' must be a finite number; got {value}.",
    "wrong_type": "'{setting}' should be {kind}, got {value}.",
    "kind_int": "a whole number",
    "kind_float": "a number",
    "kind_bool": "true/false",
    "kind_str": "text",
    "kind_list": "a word or a list of names",
    "kind_dict": "a mapping of parameters",
    "kind_other": "a value of another kind",
    "too_many_items": "'{setting}' holds {count} items; at most {limit} are supported.",
    "not_a_choice": "'{setting}' must be one of {choices}; got {value}.",
    "below_min": "'{setting}' must be at least {limit}; got {value}.",
    "above_max": "'{setting}' must be at most {limit}; got {value}.",
    "int_too_large": "'{setting}' is too large a number ({value}); whole numbers must be between "
                     "-{limit} and {limit}.",
    "too_long": "'{setting}' is too long ({count} characters; at most {limit}).",
    "too_many_params": "'{setting}' holds more than {limit} values; reward parameters should be "
                       "short.",
    "params_too_deep": "'{setting}' is nested more than {depth} levels deep.",
    "param_name": "Parameter names in '{setting}' must be text; got {value}.",
    "param_value": "'{setting}' must be text, a number, true/false, a list or a mapping; got "
                   "{value}.",
    "override_too_long": "Override '{text}' is too long ({count} characters).",
    "override_form": "Override '{text}' should look like section.key=value.",
    "override_unknown": "Unknown setting '{setting}'.",
    # found by the trainer, once it knows its processes and machine
    "gpus_per_process": "{processes} processes on this machine, but it has {gpus} GPUs: one "
                        "process per GPU.",
    "fsdp_precision": "A sharded (FSDP) run needs a 16- or 32-bit base, not {precision}: set "
                      "{setting} to 16bit, or train the 4-bit base data parallel (accelerate "
                      "launch --multi_gpu).",
    "vllm_processes": "{setting} vllm serves a run of one process, not {processes}: set "
                      "{setting} to auto or transformers.",
    "checkpoints_differ": "The training processes found different checkpoints: the run folder "
                          "must be the same shared folder for all of them (docs/SCALING.md).",
    "launch_unsupported": "accelerate's {kind} launch is not supported: a run trains data "
                          "parallel (accelerate launch --multi_gpu) or sharded (--use_fsdp; "
                          "docs/SCALING.md).",
}


def render(msg_id: str, params: dict | None = None, text=None) -> str:
    """Message `msg_id` filled with `params` (a parameter may be a message itself:
    {"id", "params"}); `text(id)` gives each template (English by default)."""
    text = text or MESSAGES.get

    def shown(value):
        if isinstance(value, dict) and "id" in value:
            return render(value["id"], value.get("params"), text)
        if isinstance(value, float):  # with the language's decimal mark: 0.05 / 0,05
            return repr(value).replace(".", text("decimal_point"))
        return value

    return text(msg_id).format(**{key: shown(value) for key, value in (params or {}).items()})


class ConfigError(MessageError):
    """A configuration problem, phrased as one line for a beginner.

    `ConfigError("below_min", setting="grpo.beta", ...)` says message `below_min` of MESSAGES
    (the id and parameters stay on the error, for the studio to say in the page's language);
    any other text is taken as it is."""

    MESSAGES = MESSAGES
    render = staticmethod(render)


class _SettingsLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and deep nesting while composing, so that
    nothing is ever expanded."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1 if getattr(event, "start_mark", None) else "?"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError("yaml_anchor", line=line)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError("too_deep_line", depth=MAX_DEPTH, line=line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_yaml(text: str, what: dict) -> Any:
    """YAML text to Python values; every problem becomes a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_SettingsLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        if line is None:
            raise ConfigError("yaml_invalid", what=what) from None
        raise ConfigError("yaml_invalid_line", what=what, line=line + 1) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        if "digits" in str(exc):
            raise ConfigError("yaml_digits", what=what) from None
        raise ConfigError("yaml_reason", what=what, reason=_short(exc)) from None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _short(value: Any, limit: int = 60) -> str | float | dict:
    """A value for a message: its repr, cut short; big numbers by their size (a message), and a
    finite decimal number as it is (each language writes its own decimal mark)."""
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        digits = int(abs(value).bit_length() * math.log10(2)) + 1
        return {"id": "big_number", "params": {"digits": digits}}
    text = repr(value) if not isinstance(value, BaseException) else (str(value).splitlines() or [""])[0]
    return _clip(text, limit)


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
                          "dynamic 4-bit (NF4 except the layers that lose most in 4-bit, "
                          "measured on the model), 16-bit, or 32-bit.",
                          choices=("4bit", "dynamic4bit", "16bit", "32bit"))
    dynamic_keep_share: float = knob(0.1, "dynamic4bit: the largest share of the linear layers' "
                                     "weights kept unquantized (those whose 4-bit outputs are "
                                     "furthest off).", min=0.0, max=1.0)
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
    max_rows: int | None = knob(None, "Use only the first N rows (empty: all).", min=1,
                                max=1_000_000_000)
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
    loss_type: str = knob("dapo", "The policy loss and how its token losses are averaged: grpo "
                          "(per answer), bnpo (per pass), dr_grpo (fixed length), dapo (per step), "
                          "cispo (clipped weights, needs epsilon_high), sapo (a soft gate), luspo "
                          "(answer-length weighted, for sequence level), vespo (gamma weights).",
                          choices=LOSS_TYPES)
    advantage_estimator: str = knob("grpo", "Baseline of an answer's reward: its group's mean "
                                    "(grpo) or the mean of the other answers (rloo; use it with "
                                    "scale_rewards none, as RLOO is defined).",
                                    choices=("grpo", "rloo"))
    epsilon: float = knob(0.2, "Lower clipping range of the importance ratio.", min=0.0, max=10.0)
    epsilon_high: float | None = knob(None, "Upper clipping range (empty: same as epsilon).",
                                      min=0.0, max=10.0)
    importance_sampling_level: str = knob("token", "'token' (GRPO) or 'sequence' (GSPO).",
                                          choices=("token", "sequence"))
    beta: float = knob(0.0, "Weight of the KL penalty against the base model (0: off, no "
                       "reference pass).", min=0.0, max=10.0)
    use_bias_correction_kl: bool = knob(True, "Multiply the KL term by the importance ratio (the "
                                        "unbiased reverse-KL gradient; it changes the gradient "
                                        "whenever beta > 0, even on-policy).")
    sapo_temperature_pos: float = knob(1.0, "sapo: gate temperature for answers better than their "
                                       "group.", min=1e-3, max=100.0)
    sapo_temperature_neg: float = knob(1.05, "sapo: gate temperature for the others.", min=1e-3,
                                       max=100.0)
    vespo_k_pos: float = knob(2.0, "vespo: power k for positive advantages.", min=0.0, max=100.0)
    vespo_lambda_pos: float = knob(3.0, "vespo: decay lambda for positive advantages.", min=0.0,
                                   max=100.0)
    vespo_k_neg: float = knob(3.0, "vespo: power k for negative advantages.", min=0.0, max=100.0)
    vespo_lambda_neg: float = knob(2.0, "vespo: decay lambda for negative advantages.", min=0.0,
                                   max=100.0)
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
    seed: int = knob(42, "Random seed for data order, sampling and initialisation.", min=0,
                     max=2**32 - 1)
    save_steps: int = knob(10, "Save a checkpoint every N steps (0: only at the end).", min=0,
                           max=1_000_000)
    keep_checkpoints: int = knob(2, "Checkpoints kept on disk, the newest (0: all). The final "
                                 "adapter is always kept.", min=0, max=1_000_000)
    sample_every: int = knob(1, "Log example completions every N steps.", min=1, max=1_000_000)
    threads: int | None = knob(None, "CPU threads for torch (empty: all cores).", min=1,
                               max=4096)
    processes: int = knob(1, "Processes that train the run together, one per GPU, started "
                          "through accelerate launch by the studio (python -m core train "
                          "trains on one; see docs/SCALING.md).", min=1, max=1024)
    eval_steps: int = knob(0, "Score the held-out questions (greedy) before training and every N "
                           "steps (0: off; `python -m core eval` does it after training).", min=0,
                           max=1_000_000)
    eval_max_questions: int = knob(50, "Most held-out questions scored in one evaluation.", min=1,
                                   max=100_000)
    report_to: list[str] = knob(None, "Experiment trackers that also get the metrics: any of "
                                "tensorboard, wandb, trackio, mlflow (each writes into the run "
                                "folder unless its own environment variables say otherwise).",
                                factory=list)
    report_project: str = knob("aha-studio", "Project (or experiment) name in the trackers.")
    stop_on_collapse: int = knob(0, "Stop when a collapse warning lasts this many steps, keeping "
                                 "the last checkpoint from before it as the adapter (0: warn "
                                 "only).", min=0, max=1_000_000)
    kernels: bool = knob(True, "Fused kernels: LoRA layers with hand-derived gradients (CPU and "
                         "GPU), Triton RMSNorm, RoPE, SwiGLU and log-probs on GPUs. Off: plain "
                         "peft and transformers, for comparison.")

    def __post_init__(self):
        if isinstance(self.report_to, str):  # one name, or names separated by commas
            self.report_to = [t.strip() for t in self.report_to.split(",")
                              if t.strip() and t.strip() != "none"]


@dataclass
class GenerationConfig:
    engine: str = knob("auto", "Generation engine. auto: vLLM when it is installed and a step "
                       "generates at least 4,096 tokens (prompts x answers x longest answer), "
                       "where its speed repays its start-up; otherwise transformers.",
                       choices=("auto", "transformers", "vllm"))
    vllm_mode: str = knob("server", "Where vLLM runs. server: a vLLM process of its own (its "
                          "own Python environment where its pins differ from the studio's). "
                          "colocate: inside the training process, so that the run needs one "
                          "environment that has both (the training runs in the vLLM "
                          "environment's Python).", choices=("server", "colocate"))
    vllm_weight_sync: str = knob("auto", "How the trainer's new weights reach vLLM after each "
                                 "update. lora: the adapter, which vLLM applies as it generates "
                                 "(little to send; on a CPU vLLM's adapter path generated "
                                 "2.1-2.5x slower than merged weights in GRPO steps here). "
                                 "merged: the base with the adapter added in, the trainer's own "
                                 "(4-bit: dequantized) weights in vLLM's precision, reloaded in "
                                 "place (more to send, no adapter while generating). auto: "
                                 "merged on a CPU, lora on a GPU, lora for adapters that cannot "
                                 "be merged (DoRA, biases, a tied embedding).",
                                 choices=("auto", "lora", "merged"))
    vllm_enable_sleep_mode: bool = knob(False, "vLLM colocated on a GPU: it hands its memory "
                                        "back while the policy updates (weights moved to the "
                                        "CPU, its cache dropped) and takes it again to "
                                        "generate. vLLM offers it on GPUs only.")
    vllm_gpu_memory_utilization: float | None = knob(None, "vLLM on a GPU: the share of the "
                                                     "GPU's memory it may take (empty: what the "
                                                     "model and twice a step's answers need, "
                                                     "within the memory free when it starts).",
                                                     min=0.05, max=0.95)
    vllm_importance_sampling_correction: bool = knob(True, "Weigh each answer's loss by how "
                                                     "much likelier the trainer finds it than "
                                                     "vLLM did (their weights and arithmetic "
                                                     "differ, e.g. a 4-bit trainer and a 16-bit "
                                                     "vLLM); no extra forward pass.")
    vllm_importance_sampling_mode: str = knob("sequence_mask", "token_truncate / token_mask: a "
                                              "ratio per token, clipped or zeroed outside the "
                                              "bounds; sequence_truncate / sequence_mask: one "
                                              "per answer.",
                                              choices=("token_truncate", "token_mask",
                                                       "sequence_truncate", "sequence_mask"))
    vllm_importance_sampling_clip_min: float | None = knob(None, "Lower bound of the ratio "
                                                           "(empty: none).", min=0.0, max=1e6)
    vllm_importance_sampling_clip_max: float | None = knob(3.0, "Upper bound of the ratio "
                                                           "(empty: none).", min=0.0, max=1e6)
    vllm_logprobs_as_old: str = knob("auto", "With answers from vLLM and more than one update "
                                     "per batch (grpo.num_iterations above 1), the old log-probs "
                                     "the updates are measured against can be vLLM's, which "
                                     "saves a forward pass over the batch; the clipped ratio "
                                     "then also covers the difference between vLLM and the "
                                     "trainer, and the correction above is not applied on top. "
                                     "auto: only when both hold the same weights (a 16- or "
                                     "32-bit base, or weights sent merged; a 4-bit trainer "
                                     "differs from vLLM's original weights, the adapter route's, "
                                     "by enough to clip about a quarter of the tokens at once) "
                                     "and sample without top-p or top-k (whose "
                                     "renormalised log-probs the trainer does not compute). "
                                     "on: always. off: the trainer computes them.",
                                     choices=("auto", "on", "off"))
    vllm_kv_cache_gb: int | None = knob(None, "vLLM on a CPU: GiB for its KV cache (empty: "
                                        "twice what a step's answers need, at least 1).",
                                        min=1, max=1024)
    max_batch_size: int | None = knob(None, "Most sequences generated at once (empty: chosen "
                                      "from free memory).", min=1, max=65536)
    fast_cpu_4bit: bool = knob(True, "On a CPU, sample from a faster copy of the 4-bit weights "
                               "(about 2x faster generation): with AVX512-BF16 a second 4-bit copy "
                               "in a packed layout, else float32 copies (4 bytes a weight) when "
                               "they fit in a quarter of the free memory.")


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
        """Written whole or not at all (another process may be reading the file)."""
        from .events import write_atomic
        write_atomic(path, self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict | None) -> "RunConfig":
        try:
            cfg = _build(cls, data or {}, "")
            cfg.validate()
        except ConfigError:
            raise
        except RecursionError:
            raise ConfigError("too_deep", depth=MAX_DEPTH) from None
        except Exception as exc:  # a case nobody foresaw still ends as one line, never a traceback
            raise ConfigError("unusable", reason=_short(exc, 200)) from None
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        name = Path(path).name
        try:
            with open(path, "rb") as f:  # bounded read: also safe for /dev/zero or a pipe
                raw = f.read(MAX_SETTINGS_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError("file_not_found", name=str(path)) from None
        except IsADirectoryError:
            raise ConfigError("file_folder", name=name) from None
        except OSError as exc:
            raise ConfigError("file_unreadable", name=name,
                              reason=str(exc.strerror or exc)) from None
        if len(raw) > MAX_SETTINGS_BYTES:
            raise ConfigError("file_too_big", name=name, limit=MAX_SETTINGS_BYTES // 1024)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("file_not_utf8", name=name) from None
        data = _parse_yaml(text, {"id": "what_file", "params": {"name": str(path)}})
        if data is not None and not isinstance(data, dict):
            raise ConfigError("file_not_mapping", name=str(path))
        return cls.from_dict(data)

    def validate(self) -> None:
        _check_bounds(self, "")
        if self.grpo.epsilon_high is not None and self.grpo.epsilon_high < self.grpo.epsilon:
            raise ConfigError("epsilon_high", setting="grpo.epsilon_high", other="grpo.epsilon")
        unknown = [t for t in self.train.report_to if t not in TRACKERS]
        if unknown:
            raise ConfigError("report_to_unknown", setting="train.report_to",
                              known=", ".join(TRACKERS), value=_short(unknown[0]))
        if len(set(self.train.report_to)) != len(self.train.report_to):
            raise ConfigError("report_to_twice", setting="train.report_to")
        if (self.grpo.loss_type == "vespo" and self.generation.vllm_importance_sampling_correction
                and self.generation.vllm_importance_sampling_mode.startswith("sequence")
                and self.generation.engine == "vllm"):
            raise ConfigError("vespo_mode", setting="grpo.loss_type",
                              other="generation.vllm_importance_sampling_mode")
        if self.grpo.loss_type == "cispo" and self.grpo.epsilon_high is None:
            raise ConfigError("cispo_epsilon", setting="grpo.loss_type", other="grpo.epsilon_high")
        if self.grpo.prompts_per_step % self.train.processes:
            raise ConfigError("prompts_processes", setting="grpo.prompts_per_step",
                              value=self.grpo.prompts_per_step, other="train.processes",
                              processes=self.train.processes)
        completions = self.grpo.prompts_per_step * self.grpo.num_generations
        if completions // self.train.processes % self.grpo.gradient_accumulation_steps:
            many = self.train.processes > 1
            raise ConfigError("accumulation_processes" if many else "accumulation",
                              setting="grpo.gradient_accumulation_steps",
                              value=self.grpo.gradient_accumulation_steps,
                              completions=completions // self.train.processes,
                              processes=self.train.processes)


def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise ConfigError("not_mapping", setting=path or "config")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in fields), key=str)
    if unknown:
        raise ConfigError("unknown_setting", setting=_join(path, str(unknown[0])[:60]),
                          known=", ".join(fields))
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        where = _join(path, name)
        sub = _dataclass_of(f)
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, where)
        elif name == "rewards":
            if not isinstance(value, list):
                raise ConfigError("rewards_not_list")
            if len(value) > MAX_REWARDS:
                raise ConfigError("too_many_rewards", count=len(value), limit=MAX_REWARDS)
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
        raise ConfigError("needs_value", setting=where)
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
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError("not_finite", setting=where, value=str(value))
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
        if kind.startswith("list"):  # model.target_modules: a word such as 'auto', or names
            if isinstance(value, str):
                return value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if kind == "dict" and not isinstance(value, dict):
            raise ValueError
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        base = kind.split(" ")[0].split("|")[0]
        kind = {"id": _TYPE_WORDS.get(base, "kind_other")}
        raise ConfigError("wrong_type", setting=where, kind=kind, value=_short(value)) from None
    return value


_TYPE_WORDS = {"int": "kind_int", "float": "kind_float", "bool": "kind_bool", "str": "kind_str",
               "list[str]": "kind_list", "dict": "kind_dict"}  # message ids


def _check_bounds(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = _join(path, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where)
            continue
        if isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                raise ConfigError("too_many_items", setting=where, count=len(value),
                                  limit=MAX_LIST_ITEMS)
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_bounds(item, f"{where}[{i}]")
                else:
                    _check_value(item, f"{where}[{i}]", MAX_SETTING_CHARS)
            continue
        if isinstance(value, dict):
            _check_params(value, where)
            continue
        meta = f.metadata
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError("not_finite", setting=where, value=str(value))
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError("not_a_choice", setting=where,
                              choices=", ".join(map(str, meta["choices"])), value=_short(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            # "not >=" rather than "<": anything that doesn't compare (NaN) is refused too
            if lo is not None and not value >= lo:
                raise ConfigError("below_min", setting=where, limit=lo, value=_short(value))
            if hi is not None and not value <= hi:
                raise ConfigError("above_max", setting=where, limit=hi, value=_short(value))
        _check_value(value, where, MAX_SETTING_CHARS)  # also for settings without bounds


def _check_value(value: Any, where: str, max_chars: int) -> None:
    """One plain value: finite, a whole number JSON can carry exactly, text of sane length."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("not_finite", setting=where, value=str(value))
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise ConfigError("int_too_large", setting=where, value=_short(value), limit=MAX_INT)
    if isinstance(value, str) and len(value) > max_chars:
        raise ConfigError("too_long", setting=where, count=len(value), limit=max_chars)


def _check_params(params: dict, where: str) -> None:
    """Reward params are free-form: plain YAML values only, bounded in depth, count and size."""
    count, stack = 0, [(params, where, 1)]
    while stack:
        value, at, depth = stack.pop()
        count += 1
        if count > MAX_PARAM_ITEMS:
            raise ConfigError("too_many_params", setting=where, limit=MAX_PARAM_ITEMS)
        if depth > MAX_DEPTH:
            raise ConfigError("params_too_deep", setting=where, depth=MAX_DEPTH)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError("param_name", setting=at, value=_short(key))
                _check_value(key, at, 200)
                stack.append((item, f"{at}.{key}", depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, f"{at}[{i}]", depth + 1) for i, item in enumerate(value))
        elif value is None or isinstance(value, (bool, int, float, str)):
            _check_value(value, at, MAX_TEXT_CHARS)
        else:
            raise ConfigError("param_value", setting=at, value=_short(value))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` overrides (values parsed as YAML) and re-validate."""
    data = cfg.to_dict()
    for item in overrides:
        item = str(item)
        if len(item) > MAX_SETTINGS_BYTES:
            raise ConfigError("override_too_long", text=_clip(item, 40), count=len(item))
        if "=" not in item:
            raise ConfigError("override_form", text=_clip(item))
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError("override_unknown", setting=_clip(dotted))
            node = node[part]
        node[leaf] = _parse_yaml(raw, {"id": "what_value",
                                       "params": {"setting": _clip(dotted.strip())}})
    return RunConfig.from_dict(data)
