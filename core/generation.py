"""Generation engines: sample a group of completions per prompt.

The trainer talks to an engine through `generate`; the transformers engine runs everywhere, a
vLLM engine can sit behind the same interface on GPUs.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import torch

from .models import stop_token_ids


@dataclass
class Generation:
    """Completions of one batch, the G completions of a prompt next to each other."""
    prompt_ids: list[list[int]]      # [B] prompt tokens of each completion (no padding)
    completion_ids: list[list[int]]  # [B] sampled tokens up to and including the stop token
    texts: list[str]                 # [B] decoded completions without special tokens
    truncated: list[bool]            # [B] hit max_new_tokens before a stop token


class GenerationEngine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> Generation: ...


def sample_inverse_cdf(probs: torch.Tensor) -> torch.Tensor:
    """probs [B, V] (rows summing to about 1, zeros allowed) -> one token id per row [B].

    The same draw as torch.multinomial(probs, 1): one uniform number per row, found in the
    cumulative sum by binary search. A zero-probability token is never returned.
    """
    cdf = probs.cumsum(-1)                                               # [B, V]
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True).squeeze(-1)          # c[i-1] <= u < c[i]
    # u can round up to the total: then the last token with p > 0, not one past the end
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).float().argmax(-1)
    return torch.minimum(picked, last)


class InverseCdfSampling:
    """A logits processor that samples the next token itself and leaves generate() one choice.

    generate(do_sample=True) draws with torch.multinomial, which on CPU costs about 15 ms a
    decoding step for 16 rows of a 49k vocabulary (about 1 s of a training step); a cumulative
    sum and a binary search draw from the same distribution in about 0.4 ms. generate then runs
    greedy over scores that are 0 for the sampled token and -inf elsewhere. Temperature, top-k
    and top-p are applied here with transformers' own warpers, in the order sampling uses.
    """

    def __init__(self, temperature: float, top_p: float, top_k: int):
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        self.temperature = temperature
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []) + \
            ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        choice = sample_inverse_cdf(torch.softmax(scores, dim=-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice[:, None], 0.0)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    import psutil
    return psutil.virtual_memory().available


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

    def batch_size_for(self, seq_len: int) -> int:
        """How many sequences of seq_len tokens fit: KV cache plus one step of logits each."""
        if self.max_batch_size:
            return self.max_batch_size
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elem = 2 if self.device.type == "cuda" else 4
        per_seq = (2 * cfg.num_hidden_layers * heads * head_dim * seq_len + 2 * cfg.vocab_size) * elem
        budget = available_memory_bytes(self.device) * self.memory_fraction
        return int(max(1, min(256, budget // max(per_seq, 1))))

    @torch.no_grad()
    def generate(self, prompts, num_generations, max_new_tokens, temperature=1.0, top_p=1.0,
                 top_k=0) -> Generation:
        expanded = [p for p in prompts for _ in range(num_generations)]
        longest = max(len(p) for p in expanded)
        batch = self.batch_size_for(longest + max_new_tokens)
        completion_ids: list[list[int]] = []
        truncated: list[bool] = []
        with self.weights():
            self._sample(expanded, batch, max_new_tokens, temperature, top_p, top_k,
                         completion_ids, truncated)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Generation(expanded, completion_ids, texts, truncated)

    def _sampling(self, max_new_tokens, temperature, top_p, top_k):
        """(generation config, logits processors): only what this engine asks for, never the
        model's own sampling defaults. On CPU, InverseCdfSampling draws and generate() picks
        its choice greedily; elsewhere generate() samples."""
        from transformers import GenerationConfig, LogitsProcessorList

        common = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=self.pad_id, use_cache=True)
        if self.device.type == "cpu":
            return (GenerationConfig(do_sample=False, **common),
                    LogitsProcessorList([InverseCdfSampling(temperature, top_p, top_k)]))
        return (GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p,
                                 top_k=top_k, **common), LogitsProcessorList())

    def _sample(self, expanded, batch, max_new_tokens, temperature, top_p, top_k,
                completion_ids, truncated) -> None:
        config, processors = self._sampling(max_new_tokens, temperature, top_p, top_k)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(expanded), batch):
                chunk = expanded[start:start + batch]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding
                    ids[i, width - len(p):] = torch.tensor(p)
                    mask[i, width - len(p):] = 1
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    generation_config=config, logits_processor=processors)
                for row in out[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
                    completion_ids.append(row[:cut + 1] if cut is not None else row)
                    truncated.append(cut is None)
        finally:
            self.model.train(was_training)


def make_engine(name: str, model, tokenizer, device: torch.device,
                max_batch_size: int | None = None,
                weights: Callable[[], ContextManager] | None = None) -> GenerationEngine:
    """The generation engine for a run; only transformers exists so far, so 'auto' picks it."""
    if name == "vllm":
        raise RuntimeError("The vLLM engine is not available in this version; use "
                           "generation.engine: transformers or auto.")
    return TransformersEngine(model, tokenizer, device, max_batch_size, weights=weights)
