"""Memory needed to train a model, estimated from its shape before anything is loaded.

A rough sum of the parts that dominate GRPO with LoRA: the frozen base weights at the chosen
precision, the adapter with its gradients and optimizer state, the generation KV cache, the
activations of one micro-batch (with or without gradient checkpointing), the log-prob chunk and
the runtime itself. Good to within a factor that matters for "will it fit", not to the megabyte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .i18n import decimal, t

GB = 1024 ** 3


@dataclass(frozen=True)
class ModelShape:
    params: float            # total parameters
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = True

    @property
    def embedding_params(self) -> float:
        return self.vocab * self.hidden * (1 if self.tied else 2)


# Shapes of the preset models, so the estimate works offline before any download.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "default": ModelShape(134.5e6, 576, 30, 1536, 49152, 9, 3, 64),
    "HuggingFaceTB/SmolLM2-360M-Instruct": ModelShape(361.8e6, 960, 32, 2560, 49152, 15, 5, 64),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(494e6, 896, 24, 4864, 151936, 14, 2, 64),
    "Qwen/Qwen3-0.6B": ModelShape(596e6, 1024, 28, 3072, 151936, 16, 8, 128),
    "meta-llama/Llama-3.2-1B-Instruct": ModelShape(1236e6, 2048, 16, 8192, 128256, 32, 8, 64),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelShape(1544e6, 1536, 28, 8960, 151936, 12, 2, 128, False),
}


def shape_from_config(config: dict) -> ModelShape:
    """A ModelShape from a transformers config.json dict (decoder-only models)."""
    c = config.get("text_config", config)
    hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
    heads = int(c.get("num_attention_heads") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    inter = int(c.get("intermediate_size") or 4 * hidden)
    vocab = int(c["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", c.get("tie_word_embeddings", True)))
    per_layer = hidden * (heads * head_dim) * 2 + hidden * (kv * head_dim) * 2 + 3 * hidden * inter
    params = layers * per_layer + vocab * hidden * (1 if tied else 2)
    return ModelShape(float(params), hidden, layers, inter, vocab, heads, kv, head_dim, tied)


def shape_for_source(source: str) -> ModelShape | None:
    """The shape of a preset, a local model folder or a Hub model already in the local cache."""
    source = (source or "").strip()
    if source.lower() in ("default", "", "embedded", "smollm2-135m-instruct"):
        return KNOWN_SHAPES["default"]
    if source in KNOWN_SHAPES:
        return KNOWN_SHAPES[source]
    path = Path(source).expanduser()
    config_file = path / "config.json" if path.is_dir() else None
    if config_file is None and source.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(source, "config.json")
            config_file = Path(cached) if isinstance(cached, str) else None
        except Exception:
            config_file = None
    if config_file is None or not config_file.is_file():
        return None
    try:
        return shape_from_config(json.loads(config_file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, OSError):
        return None


def lora_params(shape: ModelShape, rank: int) -> float:
    """Adapter parameters on the attention and MLP projections of every layer."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, \
        shape.intermediate
    per_layer = (h + q) + (h + kv) * 2 + (q + h) + (h + i) * 2 + (i + h)
    return rank * per_layer * shape.layers


def estimate_memory(shape: ModelShape, *, precision: str = "4bit", lora_r: int = 16,
                    keep_share: float = 0.1,
                    prompt_tokens: int = 256, completion_tokens: int = 64,
                    prompts_per_step: int = 4, num_generations: int = 4,
                    gradient_accumulation_steps: int = 1, gradient_checkpointing: bool = True,
                    optimizer: str = "adamw_8bit", gpu: bool = False,
                    available_bytes: float | None = None) -> dict[str, float]:
    """Bytes by part, and their 'total'. On a CPU, a 4-bit model samples from float32 copies of
    its quantized layers when they fit in a quarter of `available_bytes` (core.models.
    Float32GenerationWeights); without `available_bytes` that copy is left out."""
    compute = 2 if gpu else 4                     # bf16 on GPUs, fp32 on CPUs
    body = shape.params - shape.embedding_params
    if precision == "4bit":                       # NF4 + scales; embeddings stay unquantized
        base = body * 0.56 + shape.embedding_params * compute
    elif precision == "dynamic4bit":              # and up to keep_share of the body as it is
        kept = body * min(max(keep_share, 0.0), 1.0)
        base = (body - kept) * 0.56 + kept * compute + shape.embedding_params * compute
    else:
        base = shape.params * (2 if precision == "16bit" else 4)
    copy = 0.0
    if not gpu and precision in ("4bit", "dynamic4bit") and available_bytes:
        quantized = body if precision == "4bit" else body * (1 - min(max(keep_share, 0.0), 1.0))
        copy = quantized * 4 if quantized * 4 <= available_bytes / 4 else 0.0
    adapter = lora_params(shape, lora_r)
    adapter_bytes = adapter * (4 + 4 + (2 if optimizer == "adamw_8bit" else 8))
    seq = prompt_tokens + completion_tokens
    batch = prompts_per_step * num_generations
    kv_cache = batch * 2 * shape.layers * shape.kv_heads * shape.head_dim * seq * compute
    micro = max(1, batch // max(1, gradient_accumulation_steps))
    layer_acts = micro * seq * (shape.hidden * 12 + shape.intermediate * 3) * compute
    if gradient_checkpointing:
        activations = micro * seq * shape.hidden * shape.layers * compute + layer_acts
    else:
        activations = layer_acts * shape.layers
    # tiled selective log-prob, fwd + bwd: [1024 rows, 1024 or 16384 vocabulary columns] tiles
    logprob_chunk = 1024 * (16384 if gpu else 1024) * 4 * 3
    runtime = 0.5 * GB if gpu else 0.8 * GB
    parts = {"base weights": base, **({"sampling copy": copy} if copy else {}),
             "adapter + optimizer": adapter_bytes,
             "generation cache": kv_cache, "activations": activations,
             "log-prob chunk": logprob_chunk, "runtime": runtime}
    parts["total"] = sum(parts.values())
    return parts


def part_label(part: str) -> str:
    """The name of one of `estimate_memory`'s parts ('base weights', ...) in the page's
    language."""
    key = PART_KEYS.get(part)
    return t(key) if key else part


PART_KEYS = {"base weights": "estimate.part.base_weights",
             "sampling copy": "estimate.part.sampling_copy",
             "adapter + optimizer": "estimate.part.adapter",
             "generation cache": "estimate.part.generation_cache",
             "activations": "estimate.part.activations",
             "log-prob chunk": "estimate.part.logprob_chunk",
             "runtime": "estimate.part.runtime",
             "total": "estimate.part.total"}


def fit_verdict(total_bytes: float, available_bytes: float) -> tuple[str, str]:
    """('ok' | 'tight' | 'too_big', one line for a beginner)."""
    need, have = decimal(total_bytes / GB), decimal(available_bytes / GB)
    if total_bytes > available_bytes:
        return "too_big", t("estimate.fit.too_big", need=need, have=have)
    if total_bytes > 0.8 * available_bytes:
        return "tight", t("estimate.fit.tight", need=need, have=have)
    return "ok", t("estimate.fit.ok", need=need, have=have)


# ---- time -----------------------------------------------------------------------------

_PACE_CACHE: dict = {}


def _pace_of(run_dir: Path) -> dict | None:
    """An earlier run's measured pace: model source, seconds per generated token over its last
    ten steps, and its answers' mean length. Cached by the events file's size."""
    import yaml

    from core.events import EVENTS_FILE, read_events

    try:
        size = (run_dir / EVENTS_FILE).stat().st_size
    except OSError:
        return None
    hit = _PACE_CACHE.get(run_dir)
    if hit and hit[0] == size:
        return hit[1]
    pace = None
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        metrics = [e for e in read_events(run_dir)[0] if e.get("type") == "metrics"
                   and isinstance(e.get("step_time"), (int, float))
                   and (e.get("completion_tokens") or 0) > 0][-10:]
        if metrics:
            tokens = sum(m["completion_tokens"] for m in metrics)
            pace = {"source": str((cfg.get("model") or {}).get("source", "default")),
                    "name": run_dir.name, "steps": len(metrics),
                    "s_per_token": sum(m["step_time"] for m in metrics) / tokens,
                    "mean_length": tokens / len(metrics) / max(1, _answers(cfg))}
    except Exception:
        pace = None
    if len(_PACE_CACHE) > 2000:
        _PACE_CACHE.clear()
    _PACE_CACHE[run_dir] = (size, pace)
    return pace


def _answers(cfg: dict) -> int:
    g = cfg.get("grpo") or {}
    return int(g.get("prompts_per_step", 4)) * int(g.get("num_generations", 8))


def step_time_estimate(run_dirs, source: str, prompts, generations, max_length,
                       steps) -> tuple[float | None, str]:
    """(seconds per step or None, the sentence for the page saying how it was obtained): from
    the newest earlier run of the same model on this machine, at its measured seconds per
    generated token, with answers as long as that run's were (at most `max_length`)."""
    try:
        prompts, generations, max_length, steps = (int(prompts), int(generations),
                                                   int(max_length), int(steps))
    except (TypeError, ValueError):
        return None, ""
    from .watch import format_duration

    for run_dir in list(run_dirs)[:30]:
        pace = _pace_of(Path(run_dir))
        if not pace or pace["source"] != str(source or "default"):
            continue
        length = min(max_length, pace["mean_length"])
        per_step = prompts * generations * length * pace["s_per_token"]
        total = per_step * steps
        return per_step, t("estimate.time.measured", per_step=format_duration(per_step),
                           total=format_duration(total), steps=steps, name=pace["name"],
                           pace=decimal(pace['s_per_token'] * 100),
                           measured=t("estimate.time.steps_one") if pace["steps"] == 1 else
                           t("estimate.time.steps_many", n=pace["steps"]),
                           length=f"{length:.0f}")
    return None, t("estimate.time.unknown")
