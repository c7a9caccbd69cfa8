"""GRPO math as small pure functions: advantages, the policy losses, KL, and their metrics.

Shapes: B completions (prompts x group size), L completion tokens. Knobs keep the meaning they have
in TRL's GRPOTrainer (1.16) so configs and papers translate one to one; where a metric of ours means
something else than TRL's, it has its own name and TRL's is logged beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

STD_EPS = 1e-4  # keeps a group whose rewards are all equal from dividing by zero

CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # PPO's clipped surrogate
SEQUENCE_MEAN_LOSSES = ("grpo", "sapo", "luspo")  # a mean over sequences: each pass its share
STEP_TOKEN_LOSSES = ("dapo", "cispo", "vespo")    # normalised by the tokens of the whole step


def compute_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                       estimator: str = "grpo") -> tuple[torch.Tensor, dict]:
    """Group-relative advantages: each reward minus a baseline from its group, optionally scaled.

    rewards: [B] with B = num_prompts * group_size, the completions of one prompt contiguous.
    estimator: "grpo" (baseline: the group's mean) or "rloo" (baseline: the mean of the *other*
    completions of the group, leave-one-out; the same direction scaled by G / (G - 1)).
    scale_rewards: "group" (divide by the std within the group), "batch" (by the std over all B),
    "none". RLOO as TRL's RLOOTrainer defines it is estimator "rloo" with scale_rewards "none".
    Returns the advantages [B] and metrics: reward, reward_std (TRL's: the std of all B rewards),
    reward_group_std (ours: the mean spread within a group, what the learning signal depends on)
    and frac_reward_zero_std (share of groups whose rewards are all equal: no signal).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} items")
    grouped = rewards.view(-1, group_size)  # [P, G]
    mean = grouped.mean(dim=1, keepdim=True)
    group_std = grouped.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 \
        else torch.zeros_like(mean)
    batch_std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
    if estimator == "grpo":
        advantages = grouped - mean
    elif estimator == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs at least 2 completions per prompt")
        others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
        advantages = grouped - others
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    if scale_rewards == "group":
        advantages = advantages / (group_std + STD_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (batch_std + STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    metrics = {
        "reward": rewards.mean().item(),
        "reward_std": batch_std.item(),
        "reward_group_std": group_std.mean().item(),
        "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std))
        .float().mean().item(),
    }
    return advantages.reshape(-1), metrics


@dataclass(frozen=True)
class LossSettings:
    """The knobs the policy loss reads (a subset of GRPOConfig)."""
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    importance_sampling_level: str = "token"
    beta: float = 0.0
    max_completion_length: int = 64
    use_bias_correction_kl: bool = True
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    @classmethod
    def from_config(cls, grpo) -> "LossSettings":
        return cls(**{f: getattr(grpo, f) for f in cls.__dataclass_fields__})


@dataclass
class StepMetrics:
    """Metrics gathered over the passes of a step (and, later, over processes).

    Means are kept as a numerator and a count and divided once at the end, so how a step is cut
    into passes never changes them; minima stay minima and maxima maxima.
    """
    sums: dict[str, list[float]] = field(default_factory=dict)   # name -> [total, count]
    mins: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)

    def add_mean(self, name: str, total: float, count: float) -> None:
        acc = self.sums.setdefault(name, [0.0, 0.0])
        acc[0] += float(total)
        acc[1] += float(count)

    def add_min(self, name: str, value: float) -> None:
        self.mins[name] = min(self.mins.get(name, math.inf), float(value))

    def add_max(self, name: str, value: float) -> None:
        self.maxs[name] = max(self.maxs.get(name, -math.inf), float(value))

    def merge(self, other: "StepMetrics") -> "StepMetrics":
        for k, (t, c) in other.sums.items():
            self.add_mean(k, t, c)
        for k, v in other.mins.items():
            self.add_min(k, v)
        for k, v in other.maxs.items():
            self.add_max(k, v)
        return self

    def result(self) -> dict[str, float]:
        out = {k: t / max(c, 1.0) for k, (t, c) in self.sums.items()}
        out.update(self.mins)
        out.update(self.maxs)
        return out


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(r - p) - (r - p) - 1 >= 0."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def vespo_weights(advantages: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor,
                  s: LossSettings, is_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """VESPO's gamma weight of each sequence, phi(w) = e^lam * w^k * e^(-lam w) (phi(1) = 1),
    w the sequence's importance ratio (the product over its tokens), k and lam by the sign of the
    advantage. A coefficient only: no gradient flows through it. [B, 1]"""
    with torch.no_grad():
        floor = math.log(1e-8)
        seq = (torch.clamp(log_ratio, -20.0, 20.0) * mask).sum(-1, keepdim=True)
        if is_ratio is not None:  # the sampler's share of the ratio (token-level modes only)
            seq = seq + torch.clamp(torch.log(is_ratio), floor, 20.0).sum(-1, keepdim=True)
        log_w = torch.clamp(seq, floor, 20.0)
        nonneg = advantages >= 0
        k = torch.where(nonneg, s.vespo_k_pos, s.vespo_k_neg)
        lam = torch.where(nonneg, s.vespo_lambda_pos, s.vespo_lambda_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def sampler_ratio(old_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor,
                  mode: str = "sequence_mask", clip_min: float | None = None,
                  clip_max: float | None = 3.0) -> torch.Tensor:
    """TRL's importance-sampling correction for a sampler that is not the trainer (vLLM):
    exp(trainer's log-prob - sampler's), per token [B, L] or per answer [B, 1] (summed over its
    tokens), clipped to [clip_min, clip_max] ("*_truncate") or zeroed outside it ("*_mask").
    Tokens without a sampler log-prob (NaN) count as ratio 1."""
    diff = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    if mode.endswith("mask"):
        lo = clip_min if clip_min is not None else -math.inf
        hi = clip_max if clip_max is not None else math.inf
        return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    raise ValueError(f"unknown importance sampling mode {mode!r}")


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor | None,
                ref_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
                settings: LossSettings, num_items_in_batch: float | None = None,
                is_ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, StepMetrics]:
    """The policy loss of one pass (a micro-batch or part of one).

    logps, old_logps, ref_logps, mask: [B, L]; advantages: [B]. old_logps=None means the batch
    was generated by the current policy (num_iterations == 1), so the ratio is exactly 1 but
    still carries the gradient. num_items_in_batch: for "dapo", "cispo" and "vespo", the number of
    completion tokens in the whole optimizer step, so summing the passes' losses gives the token
    mean over the step. is_ratio ([B, L] or [B, 1], from sampler_ratio): the sampler
    correction each token's policy loss is multiplied by (not the KL term), as TRL does.
    Returns (loss, metrics of this pass as sums: merge the passes, then .result()).
    """
    s = settings
    mask = mask.to(logps.dtype)
    if old_logps is None:
        old_logps = logps.detach()
    log_ratio = logps - old_logps  # [B, L]
    if s.importance_sampling_level == "token":
        log_weights = log_ratio
    elif s.importance_sampling_level == "sequence":  # GSPO: one length-normalised ratio
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"unknown importance_sampling_level {s.importance_sampling_level!r}")

    eps_low = s.epsilon
    eps_high = s.epsilon_high if s.epsilon_high is not None else s.epsilon
    ratio = torch.exp(log_weights)                       # [B, L] or [B, 1]
    adv = advantages.unsqueeze(-1)                       # [B, 1]
    kind = s.loss_type
    phi = None
    if kind in CLIPPED_LOSSES:
        clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
        per_token = -torch.min(ratio * adv, clipped * adv)
    elif kind == "cispo":  # clip the importance weight itself (no gradient through it)
        per_token = -torch.clamp(ratio, max=eps_high).detach() * adv * logps
    elif kind == "sapo":   # a soft gate instead of a hard clip
        tau = torch.where(adv > 0, s.sapo_temperature_pos, s.sapo_temperature_neg)
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    elif kind == "vespo":
        phi = vespo_weights(adv, log_ratio, mask, s, is_ratio)
        per_token = -phi * adv * logps
    else:
        raise ValueError(f"unknown loss_type {kind!r}")
    per_token = per_token.expand_as(logps)
    if is_ratio is not None and kind != "vespo":  # vespo took it into its weights
        per_token = per_token * is_ratio

    kl = None
    if s.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = kl_k3(logps, ref_logps)
        if s.use_bias_correction_kl:  # times the importance ratio: the unbiased reverse-KL gradient
            kl = kl * ratio
        per_token = per_token + s.beta * kl

    loss = reduce_loss(per_token, mask, s, num_items_in_batch)
    return loss, _pass_metrics(ratio, adv, mask, kl, phi, is_ratio, s, eps_low, eps_high)


def _pass_metrics(ratio, adv, mask, kl, phi, is_ratio, s: LossSettings, eps_low: float,
                  eps_high: float) -> StepMetrics:
    """TRL's loss metrics as sums: token means over the masked tokens ([B, 1] values: means over
    sequences), the extreme per-sequence clip shares, and the sampler correction's range."""
    m = StepMetrics()
    with torch.no_grad():
        def add_mean(name, x):
            if x.shape[-1] == 1:
                m.add_mean(name, x.sum().item(), x.shape[0])
            else:
                m.add_mean(name, (x * mask).sum().item(), mask.sum().item())

        def per_sequence(x):
            return x.squeeze(-1) if x.shape[-1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

        if s.loss_type in CLIPPED_LOSSES:
            low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)
            high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
            add_mean("clip_ratio/low_mean", low)
            add_mean("clip_ratio/high_mean", high)
            add_mean("clip_ratio/region_mean", torch.clamp(low + high, max=1.0))
            low_seq, high_seq = per_sequence(low), per_sequence(high)
            low_seq, high_seq = low_seq[~low_seq.isnan()], high_seq[~high_seq.isnan()]
            if low_seq.numel():
                m.add_min("clip_ratio/low_min", low_seq.min().item())
            if high_seq.numel():
                m.add_max("clip_ratio/high_max", high_seq.max().item())
        elif s.loss_type == "cispo":
            add_mean("cispo_clip_ratio", ((ratio > eps_high) & (adv > 0)).to(mask.dtype))
        elif s.loss_type == "vespo":
            add_mean("vespo/phi_seq_mean", phi)
        if kl is not None:
            add_mean("kl", kl)
        if is_ratio is not None:
            name = "sampling/importance_sampling_ratio"
            add_mean(f"{name}/mean", is_ratio)
            values = is_ratio.flatten() if is_ratio.shape[-1] == 1 else is_ratio[mask.bool()]
            if values.numel():
                m.add_min(f"{name}/min", values.min().item())
                m.add_max(f"{name}/max", values.max().item())
    return m


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, settings: LossSettings,
                num_items_in_batch: float | None = None) -> torch.Tensor:
    """Average per-token losses the way each loss_type defines."""
    kind = settings.loss_type
    if kind in ("grpo", "sapo"):  # mean over each sequence's tokens, then over sequences
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if kind == "luspo":  # each sequence's summed loss (its length weighs), mean over sequences
        return (per_token * mask).sum(-1).mean()
    if kind == "bnpo":  # mean over all tokens of the micro-batch
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if kind == "dr_grpo":  # constant normaliser: no length bias
        return (per_token * mask).sum() / (per_token.size(0) * settings.max_completion_length)
    if kind in STEP_TOKEN_LOSSES:  # mean over all tokens of the whole optimizer step
        denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().item()
        return (per_token * mask).sum() / max(float(denom), 1.0)
    raise ValueError(f"unknown loss_type {kind!r}")
