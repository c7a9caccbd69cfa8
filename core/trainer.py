"""The GRPO step loop: generate -> score -> advantages -> log-probs -> loss -> optimizer.

Reads top to bottom: `setup()` builds everything in dependency order, `step()` does one optimizer
step, `train()` loops, checkpoints, honours stop requests and writes events.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import kernels

from . import data as data_lib
from .config import ConfigError, RunConfig
from .distributed import SilentLog, SilentProgress, World
from .evaluate import build_reward_set, prompt_ids, score_questions
from .events import EventLog, Progress, read_events
from .health import CollapseDetector, settings_advice
from .generation import make_engine
from .engine_choice import REASONS, pick_engine
from .vllm_engine import VLLMError
from .grpo import (STEP_TOKEN_LOSSES, LossSettings, StepMetrics, compute_advantages,
                   policy_loss, sampler_ratio)
from .modelcard import write_model_card
from .trackers import Trackers, check_installed
from .models import (adapts_embeddings, count_parameters, decoder_and_head, load_model,
                     public_base_id, save_adapter_files)
from .runs import STOP_FILE, usable_cpus

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"


class PromptSampler:
    """Walks the data set in a fresh seeded order each epoch; its position is checkpointed."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()


@dataclass
class Batch:
    """One generated batch: B = prompts_per_step x num_generations completions."""
    input_ids: torch.Tensor        # [B, Tp + Tc] prompt left-padded, completion right-padded
    attention_mask: torch.Tensor   # [B, Tp + Tc]
    completion_mask: torch.Tensor  # [B, Tc] tokens that count in the loss
    prompt_width: int              # Tp
    advantages: torch.Tensor       # [B]
    old_logps: torch.Tensor | None  # [B, Tc] when num_iterations > 1
    ref_logps: torch.Tensor | None  # [B, Tc] when beta > 0
    metrics: dict                  # reward and completion metrics of the generation
    sampling_logps: torch.Tensor | None = None  # [B, Tc] the sampler's (vLLM's), NaN if unknown


def completion_logps(model, input_ids, attention_mask, completion_mask, prompt_width: int,
                     temperature: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [b, Tc] and entropies [b, Tc] of the completion tokens.

    Only positions in completion_mask go through the output head, chunk by chunk.
    """
    body, head = decoder_and_head(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers them
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state               # [b, T, H]
    hidden = hidden[:, prompt_width - 1:-1]                        # [b, Tc, H] predicts Tc tokens
    targets = input_ids[:, prompt_width:]                          # [b, Tc]
    selected = completion_mask.bool()
    logps, entropy = kernels.selective_log_prob(hidden[selected], head.weight, targets[selected],
                                                temperature, chunk_size=chunk_size)  # [N]
    full = hidden.new_zeros(selected.shape, dtype=torch.float32)
    full_entropy = torch.zeros_like(full)
    full = full.masked_scatter(selected, logps)
    full_entropy[selected] = entropy
    return full, full_entropy


class PolicyLogps(torch.nn.Module):
    """completion_logps as a module, so that DistributedDataParallel sees the forward pass
    whose backward it averages (runs on several processes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, completion_mask, prompt_width: int,
                temperature: float, chunk_size: int):
        return completion_logps(self.model, input_ids, attention_mask, completion_mask,
                                prompt_width, temperature, chunk_size)


def completion_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of completion `index` of the global batch of `step`: the same whichever
    process generates it, beside whichever others."""
    return ((seed * 1_000_003 + step) * 1_000_003 + index) % (2**63 - 1)


def _trim(batch: Batch, rows: slice) -> tuple[torch.Tensor, ...]:
    """A micro-batch without the padding columns no row in it needs."""
    ids, att, cmask = batch.input_ids[rows], batch.attention_mask[rows], batch.completion_mask[rows]
    tp = batch.prompt_width
    used_prompt = att[:, :tp].sum(0).nonzero()
    first = min(int(used_prompt[0]), tp - 1) if len(used_prompt) else tp - 1
    used = att[:, tp:].sum(0).nonzero()
    last = int(used[-1]) + 1 if len(used) else 1
    return (ids[:, first:tp + last], att[:, first:tp + last], cmask[:, :last], tp - first, first,
            last)


TOKENS_PER_PASS_CPU = 512
TOKENS_PER_PASS_GPU = 16384


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, events: EventLog | None = None,
                 world: World | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # one process, or one of several started by accelerate launch: only the main one writes
        self.world = world or World()
        main = self.world.is_main
        self.events = events or (EventLog(self.run_dir) if main else SilentLog())
        # the phase within a step, for the page
        self.progress = Progress(self.run_dir) if main else SilentProgress()
        self.policy = None  # the forward pass DDP averages gradients over (several processes)
        self.step_count = 0
        self._batch: Batch | None = None
        self._stop_requested = False

    # ---- set-up, in dependency order ----------------------------------------------------
    def setup(self) -> "Trainer":
        cfg = self.cfg
        self.progress.clear()  # a phase left by an earlier worker of this run is not news
        return_freed_memory_to_os()
        world = self.world
        # train.threads is per process; the run manager's budget (AHA_TRAIN_THREADS) and the
        # machine's cores are shared by the run's processes on this machine
        threads = cfg.train.threads or world.threads(
            int(os.environ.get("AHA_TRAIN_THREADS") or 0)
            or (len(usable_cpus()) if world.distributed else 0))
        if threads:  # empty: all cores, unless the run manager keeps some for its server
            torch.set_num_threads(threads)
        seed_everything(cfg.train.seed)
        # the processes that really train the run, checked by the config's own rules (whole
        # prompts per process) and recorded in its config.yaml
        cfg.train.processes = world.size
        cfg.validate()
        check_installed(cfg.train.report_to)  # before minutes of loading, not after
        if world.distributed and torch.cuda.is_available() and \
                world.local_size > torch.cuda.device_count():
            raise ConfigError("gpus_per_process", processes=world.local_size,
                              gpus=torch.cuda.device_count())
        if world.sharded and cfg.model.precision not in ("16bit", "32bit"):
            raise ConfigError("fsdp_precision", precision=cfg.model.precision,
                              setting="model.precision")
        if world.is_main:
            self.cfg.save(self.run_dir / "config.yaml")

        self._status("loading_data", "Loading the data")
        self.dataset, self.heldout = data_lib.prepare_run_data(cfg.data)
        self.rewards = build_reward_set(cfg, self.dataset)
        missing = [i + 1 for i, a in enumerate(self.dataset["answer"]) if not a]
        if self.rewards.needs_answer and missing:
            raise data_lib.DataError("rewards_need_answers",
                                     rewards=", ".join(self.rewards.needs_answer),
                                     count=len(missing), row=self.dataset[missing[0] - 1]["row"])

        self._status("loading_model", "Loading the model")
        self.loaded = load_model(cfg.model, seed=cfg.train.seed, device=world.load_device(),
                                 fast_cpu_generation=cfg.generation.fast_cpu_4bit)
        self.model, self.tokenizer, self.device = (self.loaded.model, self.loaded.tokenizer,
                                                   self.loaded.device)
        self.kernel_report = kernels.patch_model(self.model) if cfg.train.kernels else {}
        self.model.train()
        engine, code, values = pick_engine(cfg, torch.cuda.is_available(), world.size)
        if engine == "vllm" and world.distributed:
            raise ConfigError("vllm_processes", setting="generation.engine",
                              processes=world.size)
        self.engine_reason = REASONS[code].format(**values)
        self.engine_why = {"code": code, **values}  # the same, for the studio to translate
        if engine == "vllm":
            self._status("loading_model", "Starting vLLM")
        try:
            self.engine = make_engine(engine, self.model, self.tokenizer, self.device,
                                      cfg.generation.max_batch_size,
                                      weights=self.loaded.generation_context, cfg=cfg,
                                      model_path=self.loaded.path,
                                      log_path=self.run_dir / "vllm.log")
        except VLLMError as exc:
            if cfg.generation.engine != "auto":
                raise
            self.engine = None
            self._engine_failed(exc)
        self.loss_settings = LossSettings.from_config(cfg.grpo)
        if world.distributed:
            self.policy = world.wrap(PolicyLogps(self.model))
        if world.sharded:  # the shards went to this process's device; generation gathers them
            self.device = self.engine.device = world.device() or self.device
            self.engine.world = world
            self.engine.weights = lambda: world.gathered(self.policy)
            self.engine.lean_lora = False  # it copies the LoRA factors: here, slices of them
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # bitsandbytes' 8-bit Adam keeps its state per whole tensor: not for slices of one
        self.optimizer = build_optimizer(self.params, cfg.train, eight_bit=not world.sharded)
        from transformers import get_scheduler
        self.scheduler = get_scheduler(cfg.train.lr_scheduler, self.optimizer,
                                       num_warmup_steps=cfg.train.warmup_steps,
                                       num_training_steps=cfg.train.max_steps)
        self.sampler = PromptSampler(len(self.dataset), cfg.train.seed)
        trainable, total = count_parameters(self.model)
        # the weights each process holds: all of them, or (sharded) its slice of each
        held = world.gather(sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                                for p in self.model.parameters()))
        trim_heap()  # loading's temporaries
        vllm = {"vllm_mode": self.engine.mode, "vllm_sleep": self.engine.sleep,
                "vllm_weight_sync": self.engine.weight_sync} \
            if self.engine.name == "vllm" else {}
        self._status("ready", "Model and data ready", engine=self.engine.name, **vllm,
                     engine_reason=self.engine_reason, engine_why=self.engine_why,
                     threads=torch.get_num_threads(), cpus=usable_cpus(),
                     world_size=world.size, backend=world.backend, sharding=world.sharding,
                     optimizer=type(self.optimizer).__name__,
                     pids=[pid for _host, pid in world.peers],
                     device=str(self.device), trainable_params=trainable, total_params=total,
                     params_per_process=held,
                     rows=len(self.dataset), rewards=self.rewards.names,
                     heldout_questions=self.heldout.num_rows if self.heldout else 0,
                     kernels=self.kernel_report)
        return self

    # ---- one step ---------------------------------------------------------------------
    def _prompt_ids(self, row: dict) -> list[int]:
        return prompt_ids(self.tokenizer, row, self.cfg.grpo.max_prompt_length)

    @torch.no_grad()
    def generate_batch(self) -> Batch:
        g, world = self.cfg.grpo, self.world
        # every process draws the same global batch and keeps its share (whole prompts)
        all_rows = [self.dataset[i] for i in self.sampler.take(g.prompts_per_step)]
        rows = world.share(all_rows)
        prompts = [self._prompt_ids(r) for r in rows]
        first = world.rank * len(rows) * g.num_generations  # its first completion, globally

        # 1. generate: G completions per prompt                               [B = P*G]
        step = self.step_count + 1
        keyed = {}
        if self.engine.name == "transformers":  # sampling independent of who generates what
            keyed["row_seeds"] = [completion_seed(self.cfg.train.seed, step, first + i)
                                  for i in range(len(prompts) * g.num_generations)]
        counts = hasattr(self.engine, "on_tokens")  # vLLM answers in one piece: no count
        self.progress.phase("generating", step,
                            of=len(rows) * g.num_generations * g.max_completion_length,
                            **({"tokens": 0} if counts else {}))
        if counts:
            self.engine.on_tokens = lambda n: self.progress.update(tokens=n)
        t0 = time.perf_counter()
        gen = self.engine.generate(prompts, g.num_generations, g.max_completion_length,
                                   g.temperature, g.top_p, g.top_k, **keyed)
        gen_time = time.perf_counter() - t0

        # 2. score with every reward template
        self.progress.phase("scoring", step)
        questions = [r["question"] for r in rows for _ in range(g.num_generations)]
        answers = [r["answer"] for r in rows for _ in range(g.num_generations)]
        totals, per_reward = self.rewards.score(questions, gen.texts, answers)

        # the global batch's scores and answers, in order, on every process (a few numbers and
        # texts per completion): advantages, metrics and samples are the global batch's
        shares = world.gather({"totals": totals, "per_reward": per_reward, "texts": gen.texts,
                               "lengths": [len(c) for c in gen.completion_ids],
                               "truncated": gen.truncated, "seconds": gen_time})
        all_totals = [x for share in shares for x in share["totals"]]
        all_per_reward = {name: [x for share in shares for x in share["per_reward"][name]]
                          for name in per_reward}
        rewards = torch.tensor(all_totals, dtype=torch.float32)             # [B]

        # 3. group-relative advantages                                        [B]
        all_advantages, metrics = compute_advantages(rewards, g.num_generations,
                                                     g.scale_rewards, g.advantage_estimator)
        advantages = all_advantages[first:first + len(totals)]              # this process's
        for name, scores in all_per_reward.items():
            valid = [s for s in scores if s is not None]
            metrics[f"rewards/{name}/mean"] = float(np.mean(valid)) if valid else None
            metrics[f"rewards/{name}/std"] = float(np.std(valid, ddof=1)) if len(valid) > 1 \
                else (0.0 if valid else None)

        # 4. pad into tensors: prompt left-padded, completion right-padded
        tp = max(len(p) for p in gen.prompt_ids)
        tc = max(1, max(len(c) for c in gen.completion_ids))
        b = len(gen.completion_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((b, tp + tc), pad, dtype=torch.long)
        attention = torch.zeros((b, tp + tc), dtype=torch.long)
        for i, (p, c) in enumerate(zip(gen.prompt_ids, gen.completion_ids)):
            input_ids[i, tp - len(p):tp] = torch.tensor(p)
            input_ids[i, tp:tp + len(c)] = torch.tensor(c, dtype=torch.long)
            attention[i, tp - len(p):tp + len(c)] = 1
        completion_mask = attention[:, tp:].clone()                          # [B, Tc]
        if g.mask_truncated_completions:
            completion_mask[torch.tensor(gen.truncated)] = 0
        lengths = torch.tensor([n for share in shares for n in share["lengths"]],
                               dtype=torch.float32)
        all_truncated = [t for share in shares for t in share["truncated"]]
        metrics.update({
            "completions/mean_length": lengths.mean().item(),
            "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": float(np.mean(all_truncated)),
            "generation_time": max(share["seconds"] for share in shares),
            **({"weight_sync_time": self.engine.last_update_s}
               if hasattr(self.engine, "last_update_s") else {}),
            "completion_tokens": int(lengths.sum().item()),
        })
        batch = Batch(input_ids.to(self.device), attention.to(self.device),
                      completion_mask.to(self.device), tp, advantages.to(self.device), None, None,
                      metrics)
        sampled = None
        if gen.logprobs is not None:
            sampled = torch.full((b, tc), float("nan"))
            for i, row in enumerate(gen.logprobs):
                sampled[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        # vLLM's log-probs as the old ones (mu > 1): known for every answered token, or not used
        sampler_old = (g.num_iterations > 1 and sampled is not None
                       and self._sampler_logps_as_old()
                       and not bool(torch.isnan(sampled[attention[:, tp:].bool()]).any()))
        if sampled is not None:
            sampled = sampled.to(self.device)
        if sampled is not None and self._sampler_correction() and not sampler_old:
            batch.sampling_logps = sampled

        # 5. log-probs that stay fixed while the policy moves: old (mu > 1) and reference (beta)
        if (g.num_iterations > 1 and not sampler_old) or g.beta != 0.0:
            self.progress.phase("reference", step)
        if sampler_old:  # padding is masked out of the loss; 0 keeps NaN out of its products
            batch.old_logps = torch.nan_to_num(sampled, nan=0.0)
        elif g.num_iterations > 1:
            batch.old_logps = self._logps_no_grad(batch)
        if g.num_iterations > 1:  # 1: the old log-probs came from vLLM, 0: from a forward pass
            metrics["old_logps_from_sampler"] = float(sampler_old)
        if g.beta != 0.0:
            with self.model.disable_adapter():  # the base model is the reference: no 2nd copy
                batch.ref_logps = self._logps_no_grad(batch)

        if self.step_count % self.cfg.train.sample_every == 0 and world.is_main:
            texts = [t for share in shares for t in share["texts"]]
            self._log_samples(all_rows, texts, all_truncated, all_totals, all_per_reward,
                              all_advantages)
        return batch

    def _width(self, batch: Batch) -> int:
        """The batch's padded width; sharded, the widest of all the processes' batches, so that
        every process cuts its share into the same number of passes (each pass's forward and
        backward are collectives there)."""
        width = batch.input_ids.shape[1]
        return int(self.world.max([width])[0]) if self.world.sharded else width

    def _rows_per_pass(self, batch: Batch) -> int:
        """Completions per forward/backward pass: few enough that the activations stay small.

        On CPU about 512 tokens a pass: larger passes were no faster on 2 cores and their
        activation buffers fragment the heap (peak RSS 3.2 GB against 2.1 GB with 16 x 100
        tokens cut into passes of 4).
        """
        if self.cfg.grpo.micro_batch_size:
            return self.cfg.grpo.micro_batch_size
        budget = TOKENS_PER_PASS_GPU if self.device.type == "cuda" else TOKENS_PER_PASS_CPU
        return max(1, budget // self._width(batch))

    def _micro_batches(self, batch: Batch, step: int | None = None):
        """(chunk, rows): gradient-accumulation chunks, each cut into passes of `step` rows
        (default: what fits memory)."""
        n = batch.input_ids.shape[0]
        size = n // self.cfg.grpo.gradient_accumulation_steps
        step = step or self._rows_per_pass(batch)
        for start in range(0, n, size):
            for first in range(start, start + size, step):
                yield slice(start, start + size), slice(first, min(first + step, start + size))

    def _passes(self, batch: Batch, step: int | None = None) -> int:
        return sum(1 for _ in self._micro_batches(batch, step))

    def _pass_share(self, batch: Batch, chunk: slice, rows: slice) -> float:
        """The part of its chunk's loss a pass carries, so that splitting never changes it."""
        kind = self.cfg.grpo.loss_type
        if kind in STEP_TOKEN_LOSSES:  # already normalised over the whole step
            return 1.0
        if kind == "bnpo":  # a token mean over the chunk
            total = batch.completion_mask[chunk].sum().item()
            return batch.completion_mask[rows].sum().item() / max(total, 1.0)
        return (rows.stop - rows.start) / (chunk.stop - chunk.start)  # a mean over sequences

    def _logps_no_grad(self, batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=self.device)
        # sharded, through the wrapped module: its forward gathers the root unit's weights
        forward = self.policy if self.world.sharded else partial(completion_logps, self.model)
        with self.world.guard(self.world.sharded):
            for _chunk, rows in self._micro_batches(batch):
                ids, att, cmask, width, _first, last = _trim(batch, rows)
                logps, _ = forward(ids, att, cmask, width, self.cfg.grpo.temperature,
                                   self.cfg.grpo.logprob_chunk_size)
                out[rows, :last] = logps
        self.world.reshard(self.policy)
        return out

    def step(self) -> dict:
        g, t, world = self.cfg.grpo, self.cfg.train, self.world
        start = time.perf_counter()
        if self._batch is None or self.step_count % g.num_iterations == 0:
            self._batch = self.generate_batch()
        batch = self._batch

        # 6. policy log-probs, loss and backward, micro-batch by micro-batch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        local_tokens = batch.completion_mask.sum().item()
        tokens_in_step = world.sum([local_tokens])[0]  # the global batch's
        totals = StepMetrics()
        entropy_sum = 0.0
        loss_sum = 0.0
        rows_per_pass = self._rows_per_pass(batch)
        passes = self._passes(batch, rows_per_pass)
        self.progress.phase("updating", self.step_count + 1, passes=passes)
        for done, (chunk, rows) in enumerate(self._micro_batches(batch, rows_per_pass)):
            self.progress.update(done=done)
            ids, att, cmask, width, _first, last = _trim(batch, rows)
            # several processes: DDP averages the gradients once, in the step's last backward
            # (FSDP in every one: each of its passes is a collective)
            last_pass = done == passes - 1
            with world.no_sync(self.policy, last=last_pass), \
                    world.guard(last_pass or world.sharded):
                loss, m, entropy = self._pass_loss(batch, chunk, rows, ids, att, cmask, width,
                                                   last, tokens_in_step)
                loss.backward()
            loss_sum += loss.item()
            entropy_sum += (entropy * cmask).sum().item()
            totals.merge(m)  # sums and counts: divided once, so passes never change a mean

        # 7. optimizer step (the gradients are the global batch's, alike on every process)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # sharded: the norm over all the slices
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.item()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self._weights_changed()
        self.scheduler.step()
        self.step_count += 1

        # the processes' figures brought together: sums as sums, means weighted by their
        # counts, maxima as maxima (each process's loss is its share of the mean: see
        # _pass_loss)
        combined = StepMetrics()
        for share in world.gather(totals):
            combined.merge(share)
        loss_total, entropy_total = world.sum([loss_sum, entropy_sum])
        elapsed = world.max([time.perf_counter() - start])[0]
        peak = world.max([peak_memory_mb(self.device)])[0]
        metrics = dict(batch.metrics)  # the rewards of the batch this step trained on
        metrics.update(combined.result())
        metrics.update({
            "loss": loss_total / world.size,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "entropy": entropy_total / max(tokens_in_step, 1),
            "step_time": elapsed,
            "tokens_per_second": batch.metrics["completion_tokens"] / elapsed,
            "peak_memory_mb": peak,
        })
        return metrics

    def _pass_loss(self, batch, chunk, rows, ids, att, cmask, width, last, tokens_in_step):
        """(loss, its metrics, entropies) of one pass. Scaled so that the sum over the passes
        and the mean over the processes (DDP's) is the loss of the whole global batch: a
        per-sequence mean is a mean over equal shares; a loss over the step's tokens is divided
        by the global token count and multiplied by the number of processes."""
        g = self.cfg.grpo
        if self.policy is not None:
            logps, entropy = self.policy(ids, att, cmask, width, g.temperature,
                                         g.logprob_chunk_size)               # [b, Tc]
        else:
            logps, entropy = completion_logps(self.model, ids, att, cmask, width, g.temperature,
                                              g.logprob_chunk_size)           # [b, Tc]
        old = batch.old_logps[rows, :last] if batch.old_logps is not None else None
        ref = batch.ref_logps[rows, :last] if batch.ref_logps is not None else None
        is_ratio = None
        if batch.sampling_logps is not None:  # the trainer's policy vs the sampler's
            gc = self.cfg.generation
            is_ratio = sampler_ratio((old if old is not None else logps).detach(),
                                     batch.sampling_logps[rows, :last], cmask,
                                     gc.vllm_importance_sampling_mode,
                                     gc.vllm_importance_sampling_clip_min,
                                     gc.vllm_importance_sampling_clip_max)
        loss, m = policy_loss(logps, old, ref, batch.advantages[rows], cmask,
                              self.loss_settings, num_items_in_batch=tokens_in_step,
                              is_ratio=is_ratio)
        loss = loss * self._pass_share(batch, chunk, rows)
        if g.loss_type in STEP_TOKEN_LOSSES:
            loss = loss * self.world.size  # DDP divides by it
        else:
            loss = loss / g.gradient_accumulation_steps  # the others: normalised per step
        return loss, m, entropy

    # ---- the loop -----------------------------------------------------------------------
    def train(self, max_steps: int | None = None, resume: bool = False) -> str:
        """Run until max_steps, a stop request or an error. Returns the final state."""
        max_steps = max_steps or self.cfg.train.max_steps
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is not None:
                self.load_checkpoint(ckpt)
            if len(set(self.world.gather(self.step_count))) > 1:
                raise ConfigError("checkpoints_differ")
            if ckpt is not None:
                self._status("resumed", f"Resumed from step {self.step_count}", step=self.step_count)
            else:
                self._status("resumed", "No checkpoint was saved yet: starting again from the "
                             "beginning", step=0)
        self._install_signal_handlers()
        self.trackers = Trackers(self.cfg.train.report_to if self.world.is_main else [],
                                 self.run_dir, self.cfg, self.step_count, self.events)
        self.health = self._detector()
        self._status("training", "Training", step=self.step_count, max_steps=max_steps)
        every, eval_every = self.cfg.train.save_steps, self.cfg.train.eval_steps
        if self.step_count == 0:
            for advice in settings_advice(self.cfg):
                self.events.emit("warning", code="risky_setting", step=0, **advice)
        if eval_every and self.step_count == 0:
            self.evaluate()  # the untrained model: the baseline every later score is read against
        world = self.world
        while self.step_count < max_steps:
            try:
                metrics = self.step()
            except VLLMError as exc:
                self._engine_failed(exc)  # falls back to transformers, or stops the run
                continue
            self.events.emit("metrics", step=self.step_count, max_steps=max_steps, **metrics)
            for warning in self.health.update(self.step_count, metrics):
                self.events.emit("warning", **warning.to_event())
            if eval_every and (self.step_count % eval_every == 0 or self.step_count == max_steps):
                try:
                    self.evaluate()
                except VLLMError as exc:
                    self._engine_failed(exc)
                    self.evaluate()
            if world.any(self._should_stop()):  # a stop asked of one process stops them all
                self.progress.clear()
                self.save_checkpoint()
                self._status("stopped", f"Stopped at step {self.step_count}", step=self.step_count)
                return "stopped"
            limit = self.cfg.train.stop_on_collapse
            if world.any(bool(limit) and self.health.persisted(self.step_count) >= limit):
                return self._stop_collapsed()
            if every and self.step_count % every == 0 and self.step_count < max_steps:
                self.save_checkpoint()
        self.save_checkpoint()
        state = self._adapter_state()
        if world.is_main:
            self.save_adapter(self.run_dir / ADAPTER_DIR, card=True, state=state)
        self.progress.clear()
        self._status("finished", f"Finished {self.step_count} steps", step=self.step_count,
                     adapter=str(self.run_dir / ADAPTER_DIR))
        return "finished"

    def _sampler_correction(self) -> bool:
        gc = self.cfg.generation
        if not gc.vllm_importance_sampling_correction:
            return False
        # vespo takes the correction per token only (a config with engine vllm says so at once)
        return not (self.cfg.grpo.loss_type == "vespo"
                    and gc.vllm_importance_sampling_mode.startswith("sequence"))

    def _sampler_logps_as_old(self) -> bool:
        """generation.vllm_logprobs_as_old: on, off, or auto (when vLLM holds the trainer's own
        weights: a 16- or 32-bit base, or any base when the weights reach vLLM merged; with the
        adapter route vLLM reads the original weights, not the 4-bit ones)."""
        choice = self.cfg.generation.vllm_logprobs_as_old
        if choice == "auto":  # and vLLM's log-probs are the trainer's: temperature only, no
            # top-p / top-k renormalisation (the trainer's log-probs have none)
            g = self.cfg.grpo
            same = (self.cfg.model.precision in ("16bit", "32bit")
                    or getattr(getattr(self, "engine", None), "weight_sync", None) == "merged")
            return same and g.top_p >= 1.0 and not g.top_k
        return choice == "on"

    def _weights_changed(self) -> None:
        """The adapter moved: an engine that holds its own copy of the weights takes the new
        ones before it next generates."""
        mark = getattr(getattr(self, "engine", None), "mark_weights_changed", None)
        if mark is not None:
            mark()

    def _engine_failed(self, exc: Exception) -> None:
        """vLLM died, hung or failed: with engine 'auto' the run goes on with transformers
        (a warning says so); otherwise it stops here with a checkpoint and a one-line error."""
        self.close_engine()
        if self.cfg.generation.engine != "auto":
            self.save_checkpoint()
            raise exc
        self.events.emit("warning", code="engine_fallback", step=self.step_count,
                         message=f"{exc} Generation goes on with transformers.",
                         fix="Resume the run to try vLLM again.")
        self.engine = make_engine("transformers", self.model, self.tokenizer, self.device,
                                  self.cfg.generation.max_batch_size,
                                  weights=self.loaded.generation_context)
        self.engine_reason, self.engine_why = REASONS["failed"], {"code": "failed"}

    def close_engine(self) -> None:
        """End what the run started beside this process (a vLLM process)."""
        close = getattr(getattr(self, "engine", None), "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """The engine, and DistributedDataParallel before its process group goes."""
        self.close_engine()
        self.policy = None  # World.close lets accelerate's reference go and collects it

    def _detector(self) -> CollapseDetector:
        """A collapse detector that has seen this run's earlier steps (after a resume)."""
        detector = CollapseDetector(self.rewards.correctness_best, self.rewards.names)
        if self.step_count:
            events, _ = read_events(self.run_dir)
            for e in events:
                if e["type"] == "metrics" and e["step"] <= self.step_count:
                    detector.update(e["step"], e)
        return detector

    def _stop_collapsed(self) -> str:
        """Stop a run whose collapse persisted; its adapter is the newest checkpoint from before
        the collapse began (or the untrained adapter's state when none is that old)."""
        began = self.health.collapsed_since
        self.save_checkpoint()  # where it ended, for whoever wants to look
        state = self._adapter_state()
        if not self.world.is_main:
            return "stopped"
        good = [p for p in checkpoints(self.run_dir) if checkpoint_step(p) < began]
        if good:
            shutil.rmtree(self.run_dir / ADAPTER_DIR, ignore_errors=True)
            shutil.copytree(good[-1], self.run_dir / ADAPTER_DIR,
                            ignore=lambda _d, names: [n for n in names if not n.startswith(
                                ("adapter_", "README"))])
            kept = f"the adapter from step {checkpoint_step(good[-1])}, before it began"
            write_model_card(self.run_dir / ADAPTER_DIR, self.run_dir, self.cfg,
                             f"The run collapsed at step {began}; this is {kept}.")
        else:
            self.save_adapter(self.run_dir / ADAPTER_DIR, card=True, state=state)
            kept = "the last adapter (no checkpoint from before it exists)"
        self._status("stopped", f"Stopped at step {self.step_count}: the run collapsed at step "
                     f"{began} and did not recover; kept {kept}.", step=self.step_count,
                     collapsed_at=began, adapter=str(self.run_dir / ADAPTER_DIR))
        return "stopped"

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Greedy answers to the held-out questions, scored; an `eval` event. Training's random
        state is left as it was, so evaluating never changes what the run learns."""
        if self.heldout is None or not (self.world.is_main or self.world.sharded):
            # the main process evaluates, the others wait for it at the next step; sharded,
            # every process takes part in each forward pass (only the main one writes)
            return None
        n = min(self.cfg.train.eval_max_questions, self.heldout.num_rows)
        self.progress.phase("evaluating", self.step_count, questions=n)
        rows = [self.heldout[i] for i in range(n)]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            greedy, _ = score_questions(self.engine, self.tokenizer, rows, self.rewards, self.cfg)
        self.model.train()
        summary = greedy.summary()
        self.events.emit("eval", step=self.step_count, questions=n, **summary)
        return summary

    def request_stop(self) -> None:
        self._stop_requested = True

    def _should_stop(self) -> bool:
        return self._stop_requested or (self.run_dir / STOP_FILE).exists()

    def _install_signal_handlers(self) -> None:
        try:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        except ValueError:
            pass  # not the main thread (e.g. inside a test runner thread)

    # ---- checkpoints ------------------------------------------------------------------
    def _adapter_state(self) -> dict | None:
        """Sharded: the trainable weights made whole, for the main process to save (every
        process calls this: gathering is a collective). Otherwise None: the model has them."""
        if not self.world.sharded:
            return None
        from peft.utils.constants import EMBEDDING_LAYER_NAMES

        # and, when LoRA adapts an embedding, the base embeddings peft saves beside it
        embeddings = adapts_embeddings(self.model)
        return self.world.full_tensors({
            name: p for name, p in self.model.named_parameters()
            if p.requires_grad or (embeddings and any(e in name for e in EMBEDDING_LAYER_NAMES))})

    def save_adapter(self, path: Path, card: bool = False, note: str = "",
                     state: dict | None = None) -> None:
        """The adapter in peft's format, naming its base as others can load it (the embedded
        model by its Hub id, never a folder of this machine); with `card`, a model card.
        `state`: the trainable weights whole (_adapter_state), when the model holds slices."""
        for peft_config in getattr(self.model, "peft_config", {}).values():
            peft_config.base_model_name_or_path = public_base_id(self.cfg.model.source)
        save_adapter_files(self.model, path, state)
        if card:
            write_model_card(path, self.run_dir, self.cfg, note)

    def save_checkpoint(self) -> Path:
        """Everything a resume needs, written by the main process (every process calls it: a
        batch kept between steps (num_iterations > 1) is each process's own share, gathered)."""
        final = self.run_dir / CHECKPOINTS_DIR / f"step-{self.step_count}"
        mid_cycle = self.step_count % self.cfg.grpo.num_iterations != 0
        kept = mid_cycle and self._batch is not None
        batches = self.world.gather(batch_to(self._batch, "cpu") if kept else None)
        state = self._adapter_state()
        optimizer = self.world.full_optimizer_state(self.optimizer)
        if not self.world.is_main:
            return final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_adapter(tmp, state=state)
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "rng.pt")
        if kept:  # one share per process, in rank order
            torch.save(batches if self.world.distributed else self._batch, tmp / "batch.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": self.step_count, "sampler": self.sampler.state_dict(),
             "world_size": self.world.size}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.events.emit("checkpoint", step=self.step_count, path=str(final))
        self.prune_checkpoints()
        return final

    def prune_checkpoints(self) -> None:
        """Keep the newest `train.keep_checkpoints`, and the newest one from before a collapse
        that is going on (the one `stop_on_collapse` would keep)."""
        keep = self.cfg.train.keep_checkpoints
        found = checkpoints(self.run_dir)
        if not keep or len(found) <= keep:
            return
        kept = set(found[-keep:])
        health = getattr(self, "health", None)
        began = health.collapsed_since if health is not None else None
        if began is not None:
            before = [p for p in found if checkpoint_step(p) < began]
            kept.update(before[-1:])
        for path in found:
            if path not in kept:
                shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors"))
        self._weights_changed()
        # on the CPU first: the optimizer moves its state to each parameter's device
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False,
                                                  map_location="cpu"))
        self.world.shard_optimizer_state(self.optimizer)  # sharded: each process its slice
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        state = json.loads((path / "trainer_state.json").read_text())
        self.step_count = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self._batch = None
        if (path / "batch.pt").exists():
            saved = torch.load(path / "batch.pt", weights_only=False, map_location="cpu")
            shares = saved if isinstance(saved, list) else [saved]
            if len(shares) == self.world.size:
                self._batch = batch_to(shares[self.world.rank], self.device)
            # saved by another number of processes: this cycle's remaining passes train on a
            # fresh batch instead of the kept one

    # ---- events -----------------------------------------------------------------------
    def _status(self, state: str, message: str, **fields) -> None:
        self.events.emit("status", state=state, message=message, **fields)

    def _log_samples(self, rows, texts, truncated, totals, per_reward, advantages) -> None:
        g = self.cfg.grpo.num_generations
        items = []
        for i in range(min(len(texts), 2 * g)):  # the groups of the first two prompts
            row = rows[i // g]
            items.append({
                "prompt": row["question"], "answer": row["answer"], "completion": texts[i],
                "rewards": {name: scores[i] for name, scores in per_reward.items()},
                "total": totals[i], "advantage": float(advantages[i]),
                "truncated": truncated[i],
            })
        self.events.emit("samples", step=self.step_count + 1, items=items)


def batch_to(batch: Batch | None, device) -> Batch | None:
    """The batch with its tensors on `device`."""
    if batch is None:
        return None
    import dataclasses
    return dataclasses.replace(batch, **{
        f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)})


def build_optimizer(params, t, eight_bit: bool = True) -> torch.optim.Optimizer:
    """train.optimizer: AdamW, or bitsandbytes' 8-bit AdamW where it can run (`eight_bit`, and a
    bitsandbytes backend for the device); torch's AdamW otherwise."""
    kwargs = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                  weight_decay=t.weight_decay)
    if t.optimizer == "adamw_8bit" and eight_bit:
        try:
            import bitsandbytes as bnb
            return bnb.optim.AdamW8bit(params, **kwargs)
        except Exception:  # bitsandbytes without a backend for this device
            pass
    return torch.optim.AdamW(params, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def return_freed_memory_to_os() -> bool:
    """Fix glibc's thresholds so big freed blocks go back to the OS, and middling ones are reused.

    By default glibc raises its mmap threshold (up to 32 MB) after large blocks are freed, so
    big activations then come from a heap that fragments and never shrinks. A fixed threshold
    maps the big blocks on their own and unmaps them when freed. Below it, blocks come from the
    heap and are reused without touching the OS; the trim threshold lets the heap keep up to
    64 MiB of free pages rather than hand them back and fault them in again.
    Measured on the benchmark config (2-core CPU): 128 KiB gave the least memory but 1.5x the
    step time; 2 MiB mapped every dequantized MLP weight (3.5 MB) afresh, 1.8 million page faults
    and about 4 s of system time a step; 8 MiB has 20x fewer faults and 0.4 s of system time at
    the same peak memory (within 50 MB).
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc (macOS, musl): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 8 << 20)
                and libc.mallopt(m_trim_threshold, 64 << 20))


def trim_heap() -> None:
    """Hand the free pages inside glibc's heap back to the OS (a no-op elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = [p for p in root.glob("step-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None
