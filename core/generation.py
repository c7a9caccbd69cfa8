"""Generation engines: sample a group of completions per prompt.

The trainer talks to an engine through `generate`; the transformers engine runs everywhere, the
vLLM engine (core.vllm_engine) answers from a vLLM process where vLLM is installed.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import torch

from .models import LeanLoraForGeneration, stop_token_ids


@dataclass
class Generation:
    """Completions of one batch, the G completions of a prompt next to each other."""
    prompt_ids: list[list[int]]      # [B] prompt tokens of each completion (no padding)
    completion_ids: list[list[int]]  # [B] sampled tokens up to and including the stop token
    texts: list[str]                 # [B] decoded completions without special tokens
    truncated: list[bool]            # [B] hit max_new_tokens before a stop token
    # [B] each sampled token's log-prob at the sampling temperature, when the engine reports it
    # (NaN for a token it gave none for)
    logprobs: list[list[float]] | None = None
    seconds: float | None = None     # time the engine spent generating


class GenerationEngine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 min_new_tokens: int = 0) -> Generation: ...


def sample_gumbel_max(scores: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """scores [B, V] (logits; -inf for a token never to be drawn) -> one token id per row [B].

    The same distribution as torch.multinomial(softmax(scores), 1), drawn as the Gumbel-max
    trick: the argmax of scores plus -log(-log(u)) for one uniform number u per token (from
    torch's random stream, or `uniforms` [B, V], which it overwrites). Unlike a draw from the
    cumulative sum, whose 49k boundaries each move with the last bit of every logit, a draw
    changes only when the two best perturbed scores are within that last bit of each other:
    the same seed gives the same token when another batch shape or padding rounds the logits
    differently (runs on several processes, core.distributed).
    """
    if uniforms is None:
        uniforms = torch.rand(scores.shape, device=scores.device, dtype=torch.float32)
    # u = 0 would make the noise -inf and could leave a row with nothing to draw
    noise = uniforms.clamp_(min=torch.finfo(uniforms.dtype).tiny).log_().neg_().log_().neg_()
    return noise.add_(scores).argmax(-1)


class SeededSampling:
    """A logits processor that samples the next token itself and leaves generate() one choice.

    generate(do_sample=True) draws with torch.multinomial, which on CPU costs about 17 ms a
    decoding step for 16 rows of a 49k vocabulary; the Gumbel-max draw here
    (sample_gumbel_max) takes 5-7 ms, about 1 ms more than a draw from the cumulative sum,
    which rounding moved (bench/sampling.py).
    generate then runs greedy over scores that are 0 for the sampled token and -inf elsewhere.
    Temperature, top-k and top-p are applied here with transformers' own warpers, in the order
    sampling uses.

    With `seeds` (one per row), each row draws its uniform numbers from a random stream of its
    own: a completion then depends on its seed alone, never on which other rows share its batch
    or which process generates it (runs on several processes, core.distributed).
    """

    def __init__(self, temperature: float, top_p: float, top_k: int,
                 seeds: list[int] | None = None):
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        self.seeds = seeds
        self.generators: list[torch.Generator] | None = None  # made on the scores' device
        self.temperature = temperature
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []) + \
            ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def _uniforms(self, scores: torch.Tensor) -> torch.Tensor | None:
        if self.seeds is None:
            return None
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        uniforms = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, generator in zip(uniforms, self.generators):
            row.uniform_(generator=generator)  # one stream per row: the batch does not matter
        return uniforms

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        choice = sample_gumbel_max(scores, self._uniforms(scores))
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice[:, None], 0.0)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    import psutil
    return psutil.virtual_memory().available


def kv_bytes_per_token(config, elem: int) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer's KV heads."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * elem


class TransformersEngine:
    """model.generate in batches whose KV cache fits a share of the free memory."""
    name = "transformers"

    def __init__(self, model, tokenizer, device: torch.device, max_batch_size: int | None = None,
                 memory_fraction: float = 0.25,
                 weights: Callable[[], ContextManager] | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.weights = weights or nullcontext  # e.g. swaps in a packed 4-bit copy
        self.max_batch_size = max_batch_size
        self.memory_fraction = memory_fraction
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id
        self.on_tokens: Callable[[int], None] | None = None  # tokens so far, while generating
        # each row's tokens so far (of the batch now generating), at most every 0.3 s: for
        # answers that appear as they are written
        self.on_partial: Callable[[list[list[int]]], None] | None = None
        # LoRA layers with less Python around them while sampling (LeanLoraForGeneration)
        self.lean_lora = True
        # sharded weights (core.distributed.World, FSDP): every process generates in step,
        # batch for batch and token for token until all are done
        self.world = None

    def batch_size_for(self, seq_len: int) -> int:
        """How many sequences of seq_len tokens fit: KV cache plus one step of logits each."""
        if self.max_batch_size:
            return self.max_batch_size
        elem = 2 if self.device.type == "cuda" else 4
        # and a step's logits, with the sampler's float32 temporaries (softmax, cumulative sum)
        per_seq = (kv_bytes_per_token(self.model.config, elem) * seq_len
                   + (2 * elem + 3 * 4) * self.model.config.vocab_size)
        budget = available_memory_bytes(self.device) * self.memory_fraction
        return int(max(1, min(256, budget // max(per_seq, 1))))

    @torch.no_grad()
    def generate(self, prompts, num_generations, max_new_tokens, temperature=1.0, top_p=1.0,
                 top_k=0, min_new_tokens: int = 0,
                 row_seeds: list[int] | None = None,
                 adapter_names: list[str] | None = None) -> Generation:
        """num_generations completions of each prompt. row_seeds: one per completion (prompt
        major), for sampling that does not depend on the batch (SeededSampling).
        adapter_names: one per completion, the peft adapter that writes it ("__base__": the
        base model), so that several adapters answer in one batch."""
        expanded = [p for p in prompts for _ in range(num_generations)]
        longest = max(len(p) for p in expanded)
        batch = self.batch_size_for(longest + max_new_tokens)
        if self.world is not None:
            batch = self.world.min(batch)
        completion_ids: list[list[int]] = []
        truncated: list[bool] = []
        # LoRA layers with less Python around them too, unless switched off (the bench)
        lean = LeanLoraForGeneration(self.model).active() if self.lean_lora else nullcontext()
        with self.weights(), lean:
            self._sample(expanded, batch, max_new_tokens, temperature, top_p, top_k,
                         completion_ids, truncated, min_new_tokens, row_seeds, adapter_names)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Generation(expanded, completion_ids, texts, truncated)

    def _sampling(self, max_new_tokens, temperature, top_p, top_k, min_new_tokens=0,
                  seeds=None):
        """(generation config, logits processors): only what this engine asks for, never the
        model's own sampling defaults. On CPU, or with a seed per row, SeededSampling draws
        and generate() picks its choice greedily; elsewhere generate() samples."""
        from transformers import GenerationConfig, LogitsProcessorList

        common = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
                      eos_token_id=self.stop_ids,
                      pad_token_id=self.pad_id, use_cache=True)
        if self.device.type == "cpu" or seeds is not None:
            return (GenerationConfig(do_sample=False, **common),
                    LogitsProcessorList([SeededSampling(temperature, top_p, top_k, seeds)]))
        return (GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p,
                                 top_k=top_k, **common), LogitsProcessorList())

    def _sample(self, expanded, batch, max_new_tokens, temperature, top_p, top_k,
                completion_ids, truncated, min_new_tokens=0, row_seeds=None,
                adapter_names=None) -> None:
        was_training = self.model.training
        self.model.eval()
        counter = TokenCounter(self.stop_ids, self.on_tokens) if self.on_tokens else None
        watcher = PartialTokens(self.on_partial) if self.on_partial else None
        try:
            for start in range(0, len(expanded), batch):
                chunk = expanded[start:start + batch]
                config, processors = self._sampling(
                    max_new_tokens, temperature, top_p, top_k, min_new_tokens,
                    row_seeds[start:start + batch] if row_seeds is not None else None)
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding
                    ids[i, width - len(p):] = torch.tensor(p)
                    mask[i, width - len(p):] = 1
                extra = {}
                if adapter_names is not None:
                    extra["adapter_names"] = adapter_names[start:start + batch]
                criteria = [c for c in (counter, watcher) if c is not None]
                if criteria:
                    from transformers import StoppingCriteriaList
                    for c in criteria:
                        c.new_chunk(width)
                    extra["stopping_criteria"] = StoppingCriteriaList(criteria)
                if self.world is not None:
                    extra["synced_gpus"] = True
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    generation_config=config, logits_processor=processors, **extra)
                for row in out[:, width:].tolist():
                    ids, cut_off = until_stop(row, self.stop_ids)
                    completion_ids.append(ids)
                    truncated.append(cut_off)
        finally:
            self.model.train(was_training)


def until_stop(row: list[int], stop_ids) -> tuple[list[int], bool]:
    """A completion up to and including its first stop token (what follows is padding), and
    whether it has none (cut off at the length limit, or not finished yet)."""
    cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
    return (row, True) if cut is None else (row[:cut + 1], False)


class PartialTokens:
    """A stopping criterion that never stops: it hands each row's tokens so far (after the
    prompt) to `report`, at most every `every` seconds."""

    def __init__(self, report: Callable[[list[list[int]]], None], every: float = 0.3):
        self.report, self.every = report, every
        self.width, self.last = 0, 0.0

    def new_chunk(self, width: int = 0) -> None:
        self.width = width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.report(input_ids[:, self.width:].tolist())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class TokenCounter:
    """A stopping criterion that never stops: it counts the tokens generated so far (rows
    that have not ended yet) and reports them, so the page can show generation moving."""

    def __init__(self, stop_ids, report: Callable[[int], None]):
        self.stop_ids = torch.tensor(sorted(stop_ids), dtype=torch.long)
        self.report = report
        self.total = 0
        self.alive: torch.Tensor | None = None

    def new_chunk(self, width: int = 0) -> None:
        self.alive = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.alive is None:
            self.alive = torch.ones(input_ids.shape[0], dtype=torch.bool)
        self.total += int(self.alive.sum())
        self.alive &= ~torch.isin(input_ids[:, -1].cpu(), self.stop_ids)
        self.report(self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def make_engine(name: str, model, tokenizer, device: torch.device,
                max_batch_size: int | None = None,
                weights: Callable[[], ContextManager] | None = None, *, cfg=None,
                model_path: str | None = None, log_path=None) -> GenerationEngine:
    """The generation engine: 'transformers', or 'vllm' (a vLLM process; needs the run's cfg
    and the base model's folder)."""
    if name == "vllm":
        return make_vllm_engine(model, tokenizer, device, cfg, model_path, log_path)
    return TransformersEngine(model, tokenizer, device, max_batch_size, weights=weights)


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts as a maximum


def vllm_dtype(precision: str, device: torch.device) -> str:
    """vLLM's precision for a model at `precision`: float32 for a 32-bit one, else bfloat16
    (float16 on GPUs without bfloat16)."""
    if precision == "32bit":
        return "float32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "float16"
    return "bfloat16"


def vllm_lora_rank(rank: int) -> int:
    """The smallest maximum rank vLLM accepts that holds an adapter of this rank."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def gpu_memory_utilization(need_bytes: float, free_bytes: float, total_bytes: float) -> float:
    """vLLM's share of a GPU that it shares with training: what it needs (its weights, its KV
    cache and 1 GiB for its own work) as a share of the whole GPU, which vLLM must find free when
    it starts; raises VLLMError when that much is not free (a tenth held back)."""
    from .vllm_engine import VLLMError
    share = (need_bytes + 2**30) / total_bytes
    room = 0.9 * free_bytes / total_bytes
    if share > room:
        raise VLLMError(f"vLLM needs about {(need_bytes + 2**30) / 2**30:.1f} GiB of GPU memory "
                        f"beside training and {free_bytes / 2**30:.1f} GiB are free: use fewer "
                        f"answers per step, a smaller model, or generation.engine transformers.")
    return round(max(share, 0.05), 3)


def base_weight_count(model) -> int:
    """Weights of the frozen base model (a 4-bit weight counted once, not as its packed bytes)."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            continue
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    return total


def vllm_weight_sync(setting: str, model, device: torch.device,
                     model_path: str | None = None) -> str:
    """How the weights reach vLLM (generation.vllm_weight_sync): auto is merged on a CPU, where
    vLLM generated 2.1-2.5x slower with an adapter (bench/results/vllm_engine_cpu.json), and
    lora on a GPU, whose adapter kernels are made for it; lora wherever the adapter cannot be
    merged."""
    from .vllm_engine import VLLMError, unmergeable
    if setting == "lora" or (setting == "auto" and device.type == "cuda"):
        return "lora"
    why = unmergeable(model, model_path)
    if setting == "merged" and why:
        raise VLLMError(f"generation.vllm_weight_sync merged cannot be used with {why}: set it "
                        f"to auto or lora.")
    if setting == "auto":
        return "lora" if why else "merged"
    return setting


def make_vllm_engine(model, tokenizer, device, cfg, model_path, log_path=None, max_loras=1):
    """A vLLM engine with settings chosen from the run and the machine: the model's precision,
    context for the longest prompt and answer, room for a step's answers at once, a KV cache
    twice what they need (on CPUs whole GiB, at least 1, within a quarter of the free memory;
    on GPUs a share of its memory for weights and cache, within what is free), in a process of
    its own or colocated in this one (generation.vllm_mode)."""
    from .vllm_engine import ColocatedVLLMEngine, VLLMEngine

    g, gen = cfg.grpo, cfg.generation
    dtype = vllm_dtype(cfg.model.precision, device)
    elem = 4 if dtype == "float32" else 2
    context = -(-(g.max_prompt_length + g.max_completion_length) // 256) * 256
    seqs = min(256, max(16, g.prompts_per_step * g.num_generations))
    kv_need = 2 * kv_bytes_per_token(model.config, elem) * context * seqs
    kv = gen.vllm_kv_cache_gb
    if kv is None:  # twice what a whole step's answers need, within a quarter of free memory
        free = available_memory_bytes(torch.device("cpu")) / 2**30 / 4
        kv = max(1, min(math.ceil(kv_need / 2**30), int(free)))
    share = 0.0
    if device.type == "cuda":
        share = gen.vllm_gpu_memory_utilization
        if share is None:
            free, total = torch.cuda.mem_get_info(device)
            share = gpu_memory_utilization(base_weight_count(model) * elem + kv_need, free, total)
    kwargs = dict(lora_rank=vllm_lora_rank(cfg.model.lora_r), dtype=dtype, seed=cfg.train.seed,
                  max_model_len=context, max_num_seqs=seqs,
                  kv_cache_gb=int(kv),  # vLLM takes whole GiB
                  gpu_memory_utilization=share, max_loras=max_loras,
                  weight_sync=vllm_weight_sync(gen.vllm_weight_sync, model, device,
                                               model_path))
    if gen.vllm_mode == "colocate":  # its log is this process's own
        return ColocatedVLLMEngine(model, tokenizer, device, model_path,
                                   sleep=gen.vllm_enable_sleep_mode, **kwargs)
    return VLLMEngine(model, tokenizer, device, model_path, log_path=log_path, **kwargs)
