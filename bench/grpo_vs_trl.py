"""Side-by-side benchmark: our GRPO core against TRL's GRPOTrainer on one fixed config.

    python bench/grpo_vs_trl.py                 # both sides, one subprocess each, then the JSON
    python bench/grpo_vs_trl.py --steps 3       # fewer measured steps
    python bench/grpo_vs_trl.py --side ours     # one side only; prints one JSON line

Sides: "ours" (our core as it is: generation from a second copy of the frozen 4-bit weights,
in bitsandbytes' packed CPU layout on CPUs with AVX512-BF16 and as float32 copies elsewhere,
training on the original layout), "ours_nopack" (our core with
`generation.fast_cpu_4bit` off: generation on the training layout), "ours_nokernels" (our core
with `train.kernels` off: peft's LoRA layers) and "trl".

Each side runs in its own process so that its peak RSS is its own. Per side: one warm-up step
(not counted), then N measured optimizer steps. A step is everything one optimizer step costs:
generation, rewards, log-probs, loss, backward and the optimizer update.

Results go to bench/results/grpo_vs_trl_cpu.json (ratios are ours / TRL; lower is better for
step time and memory, higher is better for tokens/s).

On a GPU: `--preset gpu` runs the Qwen2.5-1.5B-size config (bench/configs/qwen2.5-1.5b.json with
random weights, see bench/random_model.py; QLoRA, 8 generations, prompts of about 220 tokens under
a 256 cap, 200-token completions) with sides ours, ours_nokernels and trl, measures peak GPU
memory (torch.cuda.max_memory_allocated of each side's process) and writes
bench/results/grpo_vs_trl_gpu.json. bench/gpu.sh runs it on a machine without network.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_OUT = {"cpu": ROOT / "bench" / "results" / "grpo_vs_trl_cpu.json",
               "gpu": ROOT / "bench" / "results" / "grpo_vs_trl_gpu.json"}
TARGETS_BY_PRESET = {"cpu": {"step_time_ratio": 0.8, "peak_memory_ratio": 0.6},
                     "gpu": {"step_time_ratio": 0.5, "peak_memory_ratio": 0.15}}
TARGETS = TARGETS_BY_PRESET["cpu"]

# The fixed benchmark config. Both sides are built from this dict.
CONFIG = {
    "model": "default",                 # embedded SmolLM2-135M-Instruct (safetensors folder)
    "precision": "4bit",                # NF4, double quant, float32 compute on CPU
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
             "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"]},
    "gradient_checkpointing": True,
    "data": "builtin:arithmetic",
    "rewards": [
        {"template": "numeric_match"},
        {"template": "length_target", "params": {"unit": "words", "target": 20, "tolerance": 10},
         "weight": 0.5},
    ],
    "num_generations": 4,
    "prompts_per_step": 4,              # 16 completions per optimizer step
    "gradient_accumulation_steps": 1,
    "max_prompt_length": 128,
    "max_completion_length": 64,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,                         # off on both sides
    "beta": 0.0,
    "loss_type": "dapo",
    "epsilon": 0.2,
    "scale_rewards": "group",
    "num_iterations": 1,
    "learning_rate": 1e-4,
    "lr_scheduler": "constant",
    "adam_beta1": 0.9,
    "adam_beta2": 0.99,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "optimizer": "adamw_8bit",          # bitsandbytes AdamW8bit; "adamw" = torch AdamW
    "seed": 42,
    "threads": 2,
    "warmup_steps": 1,                  # benchmark warm-up steps, not counted
    "steps": 6,                         # measured steps
    "device": "cpu",
}

# The GPU config: a Qwen2.5-1.5B-size model (random weights), QLoRA, 8 generations, prompt 256 /
# completion 200. Random weights never stop early, so every completion is 200 tokens long.
GPU_CONFIG = dict(
    CONFIG,
    model="random:qwen2.5-1.5b",        # bench/configs/qwen2.5-1.5b.json, see bench/random_model.py
    data="long-prompts",                # about 220-token prompts, written by long_prompt_data()
    num_generations=8,
    prompts_per_step=2,                 # 16 completions per optimizer step
    max_prompt_length=256,
    max_completion_length=200,
    threads=8,
    steps=3,
    device="cuda",
)
PRESETS = {"cpu": CONFIG, "gpu": GPU_CONFIG}

TRL_OPTIM = {"adamw_8bit": "adamw_bnb_8bit", "adamw": "adamw_torch"}


# ---------------------------------------------------------------------------- shared helpers

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_memory(cfg: dict) -> dict:
    """The side's peak memory: GPU memory allocated by torch on a GPU run, else peak RSS."""
    if cfg.get("device") == "cuda":
        import torch
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
                "peak_memory_kind": "torch.cuda.max_memory_allocated",
                "gpu": torch.cuda.get_device_name()}
    return {"peak_memory_mb": peak_rss_mb(), "peak_memory_kind": "ru_maxrss"}


class RssSampler:
    """Highest resident set size seen while running, polled every `interval` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.max_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.max_mb = max(self.max_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.max_mb = max(self.max_mb, rss_mb())


def summarize(step_times: list[float], tokens: list[float], rewards: list[float],
              gen_times: list[float], cpu_times: list[float]) -> dict:
    tps = [tok / st for tok, st in zip(tokens, step_times)]
    return {
        "steps_measured": len(step_times),
        "step_time_median_s": statistics.median(step_times),
        "step_time_mean_s": statistics.fmean(step_times),
        "step_time_min_s": min(step_times),
        "step_time_max_s": max(step_times),
        # CPU seconds of the process (all its threads) per step: less sensitive to other load
        "step_cpu_time_median_s": statistics.median(cpu_times),
        "completion_tokens_per_step_mean": statistics.fmean(tokens),
        # total completion tokens / total step time, and the median of the per-step figures
        "tokens_per_second": sum(tokens) / sum(step_times),
        "tokens_per_second_median": statistics.median(tps),
        "reward_mean": statistics.fmean(rewards),
        "generation_time_mean_s": statistics.fmean(gen_times) if gen_times else None,
        "generation_share_of_step": (sum(gen_times) / sum(step_times)) if gen_times else None,
        "per_step": {"step_time_s": step_times, "step_cpu_time_s": cpu_times,
                     "completion_tokens": tokens, "reward": rewards,
                     "generation_time_s": gen_times},
    }


def optimizer_state_bits(opt) -> int:
    """8 for bitsandbytes' 8-bit optimizers (tensors under 4096 values stay 32-bit), else 32."""
    return int(getattr(getattr(opt, "args", None), "optim_bits", 32))


def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def model_path(cfg: dict) -> str:
    """The folder both sides load: the embedded model's safetensors copy, or the given source."""
    from core.models import embedded_model_dir, resolve_source
    return str(embedded_model_dir()) if cfg["model"] == "default" else resolve_source(cfg["model"])


def build_reward_set(cfg: dict):
    from reward_templates import RewardSet
    return RewardSet.from_config(cfg["rewards"])


def bnb_packing_state(model) -> dict:
    """How many 4-bit layers exist and how many are in bitsandbytes' CPU inference layout."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {"linear4bit_layers": 0, "cpu_packed_layers": 0}
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    packed = sum(bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu",
                              False)) for m in layers)
    return {"linear4bit_layers": len(layers), "cpu_packed_layers": packed,
            "avx512bf16_packing_enabled": any(getattr(m, "support_avx512bf16_for_cpu", False)
                                              for m in layers)}


# ---------------------------------------------------------------------------- our core

def run_ours(cfg: dict, variant: str = "ours") -> dict:
    set_threads(cfg["threads"])
    import torch
    from core.config import RunConfig
    from core.trainer import Trainer

    run_cfg = RunConfig.from_dict({
        "name": "bench-ours",
        "model": {"source": cfg["model"], "precision": cfg["precision"],
                  "lora_r": cfg["lora"]["r"], "lora_alpha": cfg["lora"]["alpha"],
                  "lora_dropout": cfg["lora"]["dropout"], "target_modules": cfg["lora"]["targets"],
                  "gradient_checkpointing": cfg["gradient_checkpointing"]},
        "data": {"source": cfg["data"]},
        "rewards": cfg["rewards"],
        "grpo": {"num_generations": cfg["num_generations"],
                 "prompts_per_step": cfg["prompts_per_step"],
                 "gradient_accumulation_steps": cfg["gradient_accumulation_steps"],
                 "max_prompt_length": cfg["max_prompt_length"],
                 "max_completion_length": cfg["max_completion_length"],
                 "temperature": cfg["temperature"], "top_p": cfg["top_p"], "top_k": cfg["top_k"],
                 "beta": cfg["beta"], "loss_type": cfg["loss_type"], "epsilon": cfg["epsilon"],
                 "scale_rewards": cfg["scale_rewards"], "num_iterations": cfg["num_iterations"]},
        "train": {"max_steps": cfg["warmup_steps"] + cfg["steps"],
                  "learning_rate": cfg["learning_rate"], "lr_scheduler": cfg["lr_scheduler"],
                  "adam_beta1": cfg["adam_beta1"], "adam_beta2": cfg["adam_beta2"],
                  "weight_decay": cfg["weight_decay"], "max_grad_norm": cfg["max_grad_norm"],
                  "optimizer": cfg["optimizer"], "seed": cfg["seed"], "threads": cfg["threads"],
                  "save_steps": 0, "kernels": variant != "ours_nokernels"},
        "generation": {"engine": "transformers", "fast_cpu_4bit": variant != "ours_nopack"},
    })
    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as run_dir:
        trainer = Trainer(run_cfg, run_dir).setup()
        gen_copy = trainer.loaded.generation_weights
        copy_layers = len(gen_copy) if gen_copy else 0
        copy_kind = type(gen_copy).__name__ if gen_copy else None
        setup_s = time.perf_counter() - t_setup
        setup_peak, setup_rss = peak_rss_mb(), rss_mb()
        times, tokens, rewards, gens, warm, cpus = [], [], [], [], [], []
        with RssSampler() as sampler:
            for i in range(cfg["warmup_steps"] + cfg["steps"]):
                cpu0 = time.process_time()
                m = trainer.step()
                cpu = time.process_time() - cpu0
                if i < cfg["warmup_steps"]:
                    warm.append(m["step_time"])
                    continue
                cpus.append(cpu)
                times.append(m["step_time"])
                tokens.append(float(m["completion_tokens"]))
                rewards.append(float(m["reward"]))
                gens.append(float(m["generation_time"]))
        opt = trainer.optimizer
        lora_dtypes = sorted({str(p.dtype) for p in trainer.params})
        result = summarize(times, tokens, rewards, gens, cpus)
        result.update({
            "side": variant,
            "generation_copy_layers": copy_layers,
            "generation_copy_kind": copy_kind,
            "kernels": trainer.kernel_report,
            "bnb_packing_at_end": bnb_packing_state(trainer.model),
            "warmup_step_time_s": warm,
            "setup_time_s": setup_s,
            **peak_memory(cfg),
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_after_setup_mb": setup_peak,
            "rss_after_setup_mb": setup_rss,
            "train_rss_max_mb": sampler.max_mb,
            "optimizer_class": f"{type(opt).__module__}.{type(opt).__name__}",
            "optimizer_state_bits": optimizer_state_bits(opt),
            "trainable_param_dtypes": lora_dtypes,
            "trainable_params": sum(p.numel() for p in trainer.params),
            "generation_engine": trainer.engine.name,
            "torch_threads": torch.get_num_threads(),
        })
    return result


# ---------------------------------------------------------------------------- TRL

def trl_dataset(cfg: dict):
    import datasets
    from core.data import prepare_dataset

    ds = prepare_dataset(cfg["data"])
    return datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": q}] for q in ds["question"]],
        "answer": list(ds["answer"]),
    })


def trl_reward_func(reward_set):
    """Our weighted reward set as one TRL reward function (same scores on both sides)."""
    from reward_templates.base import as_text

    def aha_reward_set(prompts, completions, answer=None, **_):
        def last_content(x):
            if isinstance(x, list) and x and isinstance(x[-1], dict):
                return as_text(x[-1].get("content"))
            return as_text(x)
        questions = [last_content(p) for p in prompts]
        texts = [last_content(c) for c in completions]
        totals, _per_term = reward_set.score(questions, texts, answer)
        return totals

    return aha_reward_set


def load_trl_model(cfg: dict, path: str):
    """The base exactly as our core loads it: same weights, same NF4 settings, same device map."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    gpu = cfg.get("device") == "cuda"
    compute = torch.bfloat16 if gpu else torch.float32
    kwargs = {"device_map": {"": 0 if gpu else "cpu"}, "dtype": compute}
    if cfg["precision"] == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def run_trl(cfg: dict) -> dict:
    set_threads(cfg["threads"])
    import torch
    import transformers
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from core.models import stop_token_ids

    t_setup = time.perf_counter()
    path = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", truncation_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_trl_model(cfg, path)
    # Stop on the same tokens as our engine (eos plus the end-of-turn markers in the vocabulary);
    # TRL reads them from the generation config for both generation and the completion mask.
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, model)
    dataset = trl_dataset(cfg)
    reward_func = trl_reward_func(build_reward_set(cfg))

    step_times: list[float] = []
    cpu_times: list[float] = []
    logged: list[dict] = []
    gen_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self._t0)
            cpu_times.append(time.process_time() - self._c0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                logged.append(dict(logs))

    total_steps = cfg["warmup_steps"] + cfg["steps"]
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=cfg["prompts_per_step"] * cfg["num_generations"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        num_generations=cfg["num_generations"],
        max_completion_length=cfg["max_completion_length"],
        temperature=cfg["temperature"], top_p=cfg["top_p"], top_k=cfg["top_k"],
        repetition_penalty=1.0,
        beta=cfg["beta"], loss_type=cfg["loss_type"], epsilon=cfg["epsilon"],
        scale_rewards=cfg["scale_rewards"], num_iterations=cfg["num_iterations"],
        learning_rate=cfg["learning_rate"], lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=0, adam_beta1=cfg["adam_beta1"], adam_beta2=cfg["adam_beta2"],
        weight_decay=cfg["weight_decay"], max_grad_norm=cfg["max_grad_norm"],
        optim=TRL_OPTIM[cfg["optimizer"]],
        max_steps=total_steps, seed=cfg["seed"],
        use_cpu=cfg.get("device") != "cuda", bf16=cfg.get("device") == "cuda", fp16=False,
        gradient_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_vllm=False, report_to="none", logging_steps=1, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=cfg["lora"]["r"], lora_alpha=cfg["lora"]["alpha"],
                             lora_dropout=cfg["lora"]["dropout"],
                             target_modules=cfg["lora"]["targets"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_func], args=args,
                          train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[Timer()])

    # Time generation: TRL calls generate() on the unwrapped (peft) model.
    gen_model = trainer.model
    original_generate = gen_model.generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original_generate(*a, **kw)
        finally:
            gen_times.append(time.perf_counter() - t0)

    gen_model.generate = timed_generate
    setup_s = time.perf_counter() - t_setup
    setup_peak, setup_rss = peak_rss_mb(), rss_mb()
    with RssSampler() as sampler:
        trainer.train()
    torch_threads = torch.get_num_threads()

    if len(step_times) != total_steps or len(logged) != total_steps:
        raise RuntimeError(f"expected {total_steps} steps and logs, got {len(step_times)} step "
                           f"times and {len(logged)} logs")
    w = cfg["warmup_steps"]
    completions = cfg["prompts_per_step"] * cfg["num_generations"]
    tokens = [float(l["completions/mean_length"]) * completions for l in logged[w:]]
    rewards = [float(l["reward"]) for l in logged[w:]]
    gens = gen_times[w:] if len(gen_times) == total_steps else []
    result = summarize(step_times[w:], tokens, rewards, gens, cpu_times[w:])
    opt = trainer.optimizer
    inner = getattr(opt, "optimizer", opt)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    result.update({
        "side": "trl",
        "bnb_packing_at_end": bnb_packing_state(trainer.model),
        "warmup_step_time_s": step_times[:w],
        "setup_time_s": setup_s,
        **peak_memory(cfg),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_setup_mb": setup_peak,
        "rss_after_setup_mb": setup_rss,
        "train_rss_max_mb": sampler.max_mb,
        "optimizer_class": f"{type(inner).__module__}.{type(inner).__name__}",
        "optimizer_state_bits": optimizer_state_bits(inner),
        "trainable_param_dtypes": sorted({str(p.dtype) for p in trainable}),
        "trainable_params": sum(p.numel() for p in trainable),
        "generation_engine": "transformers (model.generate)",
        "trl_logged_step_time_mean_s": (statistics.fmean(float(l["step_time"]) for l in logged[w:])
                                        if all("step_time" in l for l in logged[w:]) else None),
        "eos_token_ids": list(trainer.eos_token_ids),
        "torch_threads": torch_threads,
        "transformers_version": transformers.__version__,
    })
    return result


# ---------------------------------------------------------------------------- the parent

def long_prompt_data(path: Path, rows: int = 256, filler_sentences: int = 16) -> Path:
    """Arithmetic questions behind a preamble of about 150 tokens: chat-formatted prompts of
    about 220 tokens, under the 256 cap."""
    import random
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            notes = " ".join(f"Box {rng.randint(1, 99)} holds {rng.randint(1, 999)} marbles."
                             for _ in range(filler_sentences))
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            f.write(json.dumps({"question": f"Notes: {notes} Question: what is {a} + {b}?",
                                "answer": str(a + b)}) + "\n")
    return path


def prepare_inputs(cfg: dict, work: Path, tokenizer: Path | None) -> dict:
    """Make what a preset names but nobody can download: a random-weight model, long prompts."""
    cfg = dict(cfg)
    if str(cfg["model"]).startswith("random:"):
        name = cfg["model"].split(":", 1)[1]
        cache = Path(os.environ.get("AHA_BENCH_CACHE", Path(tempfile.gettempdir()) / "aha-bench"))
        folder = cache / f"{name}-random"
        cmd = [sys.executable, str(ROOT / "bench" / "random_model.py"),
               str(ROOT / "bench" / "configs" / f"{name}.json"), str(folder)]
        if tokenizer:
            cmd += ["--tokenizer", str(tokenizer)]
        print(f"== building {folder} (random weights)", flush=True)
        subprocess.run(cmd, check=True, cwd=str(ROOT))
        cfg["model"] = str(folder)
    if cfg["data"] == "long-prompts":
        cfg["data"] = str(long_prompt_data(work / "long_prompts.jsonl"))
    return cfg


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_available": affinity, "ram_gb": ram_gb,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate",
                 "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def max_prompt_tokens(cfg: dict) -> int | None:
    """Longest chat-formatted prompt of the data set (TRL 1.x has no max_prompt_length)."""
    try:
        from transformers import AutoTokenizer

        from core.data import prepare_dataset
        path = model_path(cfg)
        tok = AutoTokenizer.from_pretrained(path)
        ds = prepare_dataset(cfg["data"])
        longest = 0
        for q in ds["question"]:
            ids = tok.apply_chat_template([{"role": "user", "content": q}],
                                          add_generation_prompt=True, tokenize=True,
                                          return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            longest = max(longest, len(ids))
        return longest
    except Exception:  # informational only
        return None


class HostLoad:
    """CPU cores kept busy by processes other than this one and `pid`, from /proc."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pid: int | None = None):
        self.pid = pid

    @staticmethod
    def _busy_ticks() -> int:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait
        return sum(v[:8]) - v[3] - v[4]

    def _own_ticks(self) -> int:
        t = os.times()
        own = round((t.user + t.system) * self.TICK)
        if self.pid:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                own += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return own

    def sample(self) -> tuple[float, int, int]:
        return time.monotonic(), self._busy_ticks(), self._own_ticks()

    def other_cores(self, a: tuple, b: tuple) -> float:
        dt = max(b[0] - a[0], 1e-6)
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / self.TICK / dt)


def wait_for_idle(max_wait: float, threshold: float = 0.25, window: float = 5.0) -> dict:
    """Wait (at most max_wait s) until other processes use less than `threshold` cores."""
    load, t0, last = HostLoad(), time.monotonic(), None
    announced = False
    while True:
        a = load.sample()
        time.sleep(window)
        last = load.other_cores(a, load.sample())
        waited = time.monotonic() - t0
        if last < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "other_cores_before": round(last, 2),
                    "idle": last < threshold}
        if not announced:
            print(f"== other processes keep {last:.1f} cores busy; waiting up to "
                  f"{max_wait:.0f} s for an idle machine", flush=True)
            announced = True


def run_child(side: str, cfg: dict, timeout: float) -> tuple[dict | None, dict]:
    """Run one side in a fresh interpreter; return (its result, process info)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side,
           "--config-json", json.dumps(cfg)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    load = HostLoad(proc.pid)
    load_samples: list[float] = []
    stop_load = threading.Event()

    def watch_load():
        a = load.sample()
        while not stop_load.wait(2.0):
            b = load.sample()
            load_samples.append(load.other_cores(a, b))
            a = b

    watcher = threading.Thread(target=watch_load, daemon=True)
    watcher.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    err_lines: list[str] = []

    def pump_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            sys.stderr.write(f"[{side}] {line}")

    pump = threading.Thread(target=pump_stderr, daemon=True)
    pump.start()
    result = None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
        else:
            sys.stdout.write(f"[{side}] {line}")
    # wait4 gives this child's own resource usage (its peak RSS), independent of its report.
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    stop_load.set()
    watcher.join(timeout=5)
    pump.join(timeout=5)
    info = {"returncode": proc.returncode, "wall_s": time.perf_counter() - t0,
            # cores used by other processes while this side ran (2 s samples)
            "other_cores_mean": (round(statistics.fmean(load_samples), 3)
                                 if load_samples else None),
            "other_cores_max": round(max(load_samples), 3) if load_samples else None,
            "peak_rss_mb_wait4": usage.ru_maxrss / 1024,
            "stderr_tail": "".join(err_lines[-25:]) if proc.returncode else None}
    return result, info


def ratio(a, b):
    return (a / b) if a is not None and b else None


def compare(ours: dict, trl: dict, targets: dict = TARGETS) -> dict:
    ratios = {
        "step_time_ratio": ratio(ours["step_time_median_s"], trl["step_time_median_s"]),
        "step_time_ratio_mean": ratio(ours["step_time_mean_s"], trl["step_time_mean_s"]),
        "step_cpu_time_ratio": ratio(ours["step_cpu_time_median_s"],
                                     trl["step_cpu_time_median_s"]),
        "peak_memory_ratio": ratio(ours["peak_memory_mb"], trl["peak_memory_mb"]),
        "train_rss_max_ratio": ratio(ours["train_rss_max_mb"], trl["train_rss_max_mb"]),
        "tokens_per_second_ratio": ratio(ours["tokens_per_second"], trl["tokens_per_second"]),
    }
    met = {k: (ratios[k] is not None and ratios[k] <= v) for k, v in targets.items()}
    return {"ours_side": ours["side"], "ratios": ratios, "targets": targets, "targets_met": met}


def cpu_calibration(threads: int) -> float | None:
    """GFLOP/s of a fixed float32 matmul loop in a fresh process: shows a busy or throttled host."""
    code = ("import time, torch\n"
            f"torch.set_num_threads({threads})\n"
            "a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)\n"
            "for _ in range(3): a @ b\n"
            "n, t = 0, time.perf_counter()\n"
            "while time.perf_counter() - t < 1.0: a @ b; n += 1\n"
            "print(2 * 1024**3 * n / (time.perf_counter() - t) / 1e9)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd="/", timeout=120)
        return round(float(r.stdout.strip().splitlines()[-1]), 1)
    except Exception:
        return None


def print_table(report: dict) -> None:
    sides = report["sides"]
    rows = [
        ("step time median (s)", "step_time_median_s", "{:.2f}"),
        ("step time mean (s)", "step_time_mean_s", "{:.2f}"),
        ("step CPU time median (s)", "step_cpu_time_median_s", "{:.1f}"),
        ("generation time mean (s)", "generation_time_mean_s", "{:.2f}"),
        ("generation share of step", "generation_share_of_step", "{:.0%}"),
        ("peak RSS (MB)", "peak_memory_mb", "{:.0f}"),
        ("RSS after setup (MB)", "rss_after_setup_mb", "{:.0f}"),
        ("max RSS while training (MB)", "train_rss_max_mb", "{:.0f}"),
        ("completion tokens / step", "completion_tokens_per_step_mean", "{:.1f}"),
        ("tokens / s", "tokens_per_second", "{:.1f}"),
        ("reward mean", "reward_mean", "{:.3f}"),
    ]
    names = [s for s in sides if sides.get(s)]
    print()
    print(f"{'':30}" + "".join(f"{n:>14}" for n in names))
    for label, key, fmt in rows:
        cells = []
        for n in names:
            v = sides[n].get(key)
            cells.append(f"{fmt.format(v) if v is not None else '-':>14}")
        print(f"{label:30}" + "".join(cells))
    cells = []
    for n in names:
        v = report["processes"].get(n, {}).get("other_cores_mean")
        cells.append(f"{f'{v:.2f}' if v is not None else '-':>14}")
    print(f"{'other processes (cores)':30}" + "".join(cells))
    for cmp in report.get("comparisons", []):
        print(f"\n{cmp['ours_side']} / trl")
        for k, v in cmp["ratios"].items():
            target = cmp["targets"].get(k)
            extra = (f"  (target <= {target}: {'met' if cmp['targets_met'][k] else 'not met'})"
                     if target is not None else "")
            print(f"  {k:26} {v:.3f}{extra}" if v is not None else f"  {k:26} -")
    print()


def probe_bnb_8bit_optimizer() -> tuple[bool, str]:
    """Can bitsandbytes' AdamW8bit step a CPU tensor here?"""
    code = ("import torch, bitsandbytes as bnb\n"
            "p = torch.nn.Parameter(torch.randn(4096, 16)); o = bnb.optim.AdamW8bit([p], lr=1e-3)\n"
            "p.grad = torch.randn_like(p); o.step()\n"
            "assert o.state[p]['state1'].dtype == torch.uint8\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


SIDE_NOTES = {
    "ours": "our core as it is: generation from a second copy of the frozen 4-bit weights "
            "(bitsandbytes' packed CPU layout with AVX512-BF16, float32 copies without), "
            "training on the original layout",
    "ours_nokernels": "our core with train.kernels off: peft's LoRA layers and the chunked "
                      "torch log-prob",
    "ours_nopack": "our core with generation.fast_cpu_4bit off: generation on the training "
                   "layout, the same 4-bit kernels as TRL",
    "trl": "TRL GRPOTrainer",
}


def run_sides(sides: list[str], cfg: dict, timeout: float,
              wait_idle: float) -> tuple[dict, dict]:
    results, procs = {}, {}
    for side in sides:
        idle = wait_for_idle(wait_idle) if wait_idle > 0 else None
        print(f"== running {side} ({cfg['precision']}, {cfg['warmup_steps']} warm-up + "
              f"{cfg['steps']} measured steps)", flush=True)
        before = cpu_calibration(cfg["threads"])
        result, info = run_child(side, cfg, timeout)
        info["idle_wait"] = idle
        info["cpu_calibration_gflops_before"] = before
        info["cpu_calibration_gflops_after"] = cpu_calibration(cfg["threads"])
        results[side], procs[side] = result, info
        if result:
            print(f"== {side}: median step {result['step_time_median_s']:.2f} s, peak RSS "
                  f"{result['peak_memory_mb']:.0f} MB", flush=True)
        else:
            print(f"== {side} failed (exit {info['returncode']})", flush=True)
    return results, procs


def run_all(sides: list[str], cfg: dict, out: Path, timeout: float, wait_idle: float) -> dict:
    notes = []
    if cfg["optimizer"] == "adamw_8bit" and cfg.get("device") != "cuda":
        ok, why = probe_bnb_8bit_optimizer()
        if not ok:
            notes.append(f"bitsandbytes AdamW8bit does not run on this CPU ({why}); both sides "
                         f"use torch AdamW.")
            cfg = dict(cfg, optimizer="adamw")
    report = {
        "benchmark": "grpo_vs_trl",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MALLOC_", "OMP_", "MKL_", "KMP_", "LD_PRELOAD"))},
        "config": cfg,
        "config_notes": {
            "trl_max_prompt_length": "TRL 1.x has no max_prompt_length option; the longest "
                                     "prompt of the data set is max_prompt_tokens tokens, so our "
                                     "max_prompt_length cut is a no-op as well.",
            "max_prompt_tokens": max_prompt_tokens(cfg),
            "optimizer": {"ours": cfg["optimizer"], "trl": TRL_OPTIM[cfg["optimizer"]]},
            "trl_batch": f"per_device_train_batch_size="
                         f"{cfg['prompts_per_step'] * cfg['num_generations']}, "
                         "gradient_accumulation_steps=1, "
                         "generation_batch_size/steps_per_generation left at their defaults",
            "stop_tokens": "TRL's generation_config.eos_token_id is set to our stop ids, so both "
                           "stop on the same tokens",
            "step_time_trl": "TrainerCallback on_step_begin -> on_step_end (includes generation, "
                             "rewards, forward/backward and the optimizer step)",
            "tokens_trl": "completions/mean_length x completions per step",
            "peak_memory": ("torch.cuda.max_memory_allocated of the side's process (includes "
                            "model loading); peak_rss_mb is the host side"
                            if cfg.get("device") == "cuda" else
                            "ru_maxrss of the side's process (includes model loading); "
                            "train_rss_max_mb is the highest RSS sampled during the steps"),
            "trl_lora_dtype": "TRL casts LoRA weights of a quantized model to bfloat16 "
                              "(trainable_param_dtypes); ours keeps them in float32",
        },
        "side_notes": {s: SIDE_NOTES[s] for s in sides},
        "notes": notes,
        "fallback": None,
        "sides": {},
        "processes": {},
    }
    report["sides"], report["processes"] = run_sides(sides, cfg, timeout, wait_idle)
    if "trl" in sides and report["sides"]["trl"] is None and cfg["precision"] == "4bit":
        reason = report["processes"]["trl"]["stderr_tail"] or "unknown"
        print("== TRL failed with a 4-bit base; rerunning every side with a 32-bit base",
              flush=True)
        cfg32 = dict(cfg, precision="32bit")
        report["fallback"] = {"from_precision": "4bit", "to_precision": "32bit",
                              "reason": reason,
                              "first_attempt": {"sides": report["sides"],
                                                "processes": report["processes"]}}
        report["config"] = cfg32
        report["sides"], report["processes"] = run_sides(sides, cfg32, timeout, wait_idle)
    for side, info in report["processes"].items():
        busy = info.get("other_cores_mean")
        if busy is not None and busy > 0.25:
            report["notes"].append(
                f"{side}: other processes kept {busy:.2f} cores busy on average while it ran "
                f"(max {info.get('other_cores_max')}); its wall-clock timings are inflated, "
                f"compare step_cpu_time as well.")
    trl = report["sides"].get("trl")
    targets = TARGETS_BY_PRESET["gpu" if cfg.get("device") == "cuda" else "cpu"]
    report["comparisons"] = [compare(report["sides"][s], trl, targets) for s in sides
                             if s != "trl" and report["sides"].get(s) and trl]
    # Headline: the first of our sides that ran (by default "ours", the core as it is).
    if report["comparisons"]:
        head = report["comparisons"][0]
        report.update({"headline_side": head["ours_side"], "ratios": head["ratios"],
                       "targets": head["targets"], "targets_met": head["targets_met"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out}")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("all", *SIDE_NOTES), default="all",
                    help="run one side in this process (prints one JSON line), or all of them")
    ap.add_argument("--sides", default=",".join(SIDE_NOTES),
                    help="comma-separated sides to run with --side all")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per side")
    ap.add_argument("--optimizer", choices=("adamw_8bit", "adamw"), default=None)
    ap.add_argument("--precision", choices=("4bit", "32bit"), default=None)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                    help="cpu: the embedded model on this CPU; gpu: the Qwen2.5-1.5B-size config")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="tokenizer folder for a random model (default: the embedded model's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per side")
    ap.add_argument("--wait-idle", type=float, default=300,
                    help="before each side, wait up to this many seconds for other processes to "
                         "leave the CPU idle (0: don't wait)")
    ap.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    cfg = json.loads(a.config_json) if a.config_json else dict(PRESETS[a.preset])
    for key, value in (("steps", a.steps), ("warmup_steps", a.warmup),
                       ("optimizer", a.optimizer), ("precision", a.precision)):
        if value is not None:
            cfg[key] = value
    if cfg["steps"] < 1 or cfg["warmup_steps"] < 0:
        ap.error("--steps must be at least 1 and --warmup at least 0")

    if a.side == "all":
        sides = [s.strip() for s in a.sides.split(",") if s.strip()]
        unknown = set(sides) - set(SIDE_NOTES)
        if unknown or not sides:
            ap.error(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDE_NOTES)}")
        if cfg.get("device") == "cuda":
            sides = [s for s in sides if s != "ours_nopack"]  # a CPU-layout variant
        work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
        cfg = prepare_inputs(cfg, work, a.tokenizer)
        out = a.out or DEFAULT_OUT[a.preset]
        report = run_all(sides, cfg, out, a.timeout,
                         0 if cfg.get("device") == "cuda" else a.wait_idle)
        return 0 if all(report["sides"].get(s) for s in sides) else 1
    if a.side == "trl":
        result = run_trl(cfg)
    else:
        result = run_ours(cfg, variant=a.side)
    result["config"] = cfg
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
