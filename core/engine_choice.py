"""Which engine generates a run's answers, decided without torch: the worker asks before it
loads anything, the studio's page asks as the settings change (its process never imports
torch)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .runs import PROJECT_ROOT


def vllm_importable() -> bool:
    """Whether this Python has vLLM (what the colocated mode needs)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_python() -> str | None:
    """A Python that can run core.vllm_server, or None when vLLM is not installed."""
    env = os.environ.get("AHA_VLLM_PYTHON")
    if env:
        return env if Path(env).exists() else None
    local = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
    if local.exists():
        return str(local)
    if vllm_importable():
        return sys.executable
    return None


VLLM_MIN_TOKENS_PER_STEP = 4096  # below this, vLLM's start-up (~20 s here) is not repaid soon


# Why an engine was chosen, by code: the English words here; the studio shows each code in the
# page's language (studio/locales, engine.why.<code>).
REASONS = {
    "settings": "chosen in the settings",
    "no_vllm": "vLLM is not installed (bash scripts/setup.sh --vllm)",
    "cpu": ("on a CPU vLLM takes about 3x the memory and half a minute to start; for long "
            "answers choose it in the settings (2.2x the tokens/s at 8 answers of 200 tokens, "
            "bench/results/vllm_engine_cpu.json)"),
    "few_tokens": ("a step generates at most {tokens:,} tokens, under the {limit:,} where vLLM "
                   "repays its start-up"),
    "many_tokens": "vLLM is installed and a step generates up to {tokens:,} tokens",
    "failed": "vLLM failed during the run",
    "processes": "the run trains on {processes} processes, and vLLM generates for one only",
}


def pick_engine(cfg, gpu: bool, processes: int = 1) -> tuple[str, str, dict]:
    """(engine, code of why, its values) for a run's config: generation.engine, or for 'auto'
    the rule. Needs no torch (the studio's page asks it too); `gpu`: whether the run trains on
    a CUDA GPU; `processes`: how many processes train it (vLLM serves a run of one only).

    On a CPU, auto keeps transformers: vLLM with the weights merged generated faster there
    (1.63x the tokens/s of transformers on the classroom demo, 2.22x on 8 answers of up to 200
    tokens, steps 0.99x and 0.58x as long; bench/results/vllm_engine_cpu.json), but all its
    processes took 2.8-3.5x the memory and it starts in about 30 s against 7 s, which a laptop
    or a shared classroom server cannot always spare. AHA_VLLM_AUTO_ON_CPU=1 lets auto choose
    it anyway.
    """
    g = cfg.grpo
    tokens = g.prompts_per_step * g.num_generations * g.max_completion_length
    if cfg.generation.engine in ("transformers", "vllm"):
        return cfg.generation.engine, "settings", {}
    if processes > 1:
        return "transformers", "processes", {"processes": processes}
    if vllm_python() is None:
        return "transformers", "no_vllm", {}
    if not gpu and os.environ.get("AHA_VLLM_AUTO_ON_CPU") != "1":
        return "transformers", "cpu", {}
    if tokens < VLLM_MIN_TOKENS_PER_STEP:
        return "transformers", "few_tokens", {"tokens": tokens, "limit": VLLM_MIN_TOKENS_PER_STEP}
    return "vllm", "many_tokens", {"tokens": tokens}


def choose_engine(cfg, gpu: bool) -> tuple[str, str]:
    """(engine, why in English) for a run's config (pick_engine)."""
    engine, code, values = pick_engine(cfg, gpu)
    return engine, REASONS[code].format(**values)


def chat_engine(gpu: bool) -> str:
    """Which engine answers the studio's chat and previews: AHA_CHAT_ENGINE when set
    (transformers, llama.cpp or vllm); else vLLM on a GPU when it is installed (one process keeps
    the base model and serves every adapter asked for, several in one batch); on a CPU llama.cpp
    when it is installed (scripts/setup_export.sh; core.gguf_chat: an answer pair 1.96x as fast
    as transformers here, bench/results/chat_speed_cpu_avx512bf16.json), else transformers. vLLM
    answers on a CPU only when AHA_VLLM_CHAT_ON_CPU=1: it starts in about half a minute, takes
    about 3x the memory and answered no faster (bench/results/chat_speed_cpu.json)."""
    chosen = os.environ.get("AHA_CHAT_ENGINE", "").strip().lower()
    if chosen in ("transformers", "llama.cpp", "vllm"):
        if chosen == "vllm" and vllm_python() is None:
            return "transformers"
        if chosen == "llama.cpp" and not llama_cpp_ready():
            return "transformers"
        return chosen
    if vllm_python() is not None and (gpu or os.environ.get("AHA_VLLM_CHAT_ON_CPU") == "1"):
        return "vllm"
    if not gpu and llama_cpp_ready():
        return "llama.cpp"
    return "transformers"


def llama_cpp_ready() -> bool:
    """Whether llama.cpp and its converters are installed (what the chat's llama.cpp engine
    needs)."""
    from .gguf_chat import ready
    return ready()
