"""Signs that a run has stopped learning, read from each step's metrics.

GRPO learns only from differences inside a group of answers. A run collapses when the answers
of a group become the same (entropy near zero, zero reward spread) before they are right, or
when the policy drifts to an easy reward and away from the right answer. `CollapseDetector`
watches the per-step metrics the trainer already logs and turns these patterns into `warning`
events: a code, one plain line, and a suggested fix. It never changes training itself; the
trainer may stop the run when a warning persists (`train.stop_on_collapse`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Thresholds. Entropy is the mean per-token entropy (nats) of the sampled answers at the sampling
# temperature: about 1 to 2 for the untrained built-in model, about 0.02 once every answer in a
# group is the same string. Correctness is the correctness reward's mean over its best score.
ENTROPY_FLOOR = 0.1            # below this, the answers of a group are nearly identical
LOW_CORRECTNESS = 0.5          # "still mostly wrong": under half the best score
NO_SIGNAL_STREAK = 3           # steps in a row in which every group scored all-equal
MOSTLY_RIGHT = 0.9             # ... which is no fault once answers earn this share of the best
WINDOW = 5                     # steps per window when comparing recent steps with earlier ones
FALL_FROM_PEAK = 0.3           # correctness this far (share of best) under its best window
HACK_FALL = 0.15               # correctness falling by this much between two windows ...
HACK_RISE = 0.1                # ... while another reward's mean rises by this much
EASY_HIGH = 0.9                # another reward's mean at this (most templates score 0 to 1) ...
STALL_RISE = 0.05              # ... while correctness, still low, rose less than this
STALL_AFTER = 4 * WINDOW       # ... judged only after this many steps, to give learning time
SERIOUS = ("entropy_collapse", "no_signal", "correctness_falling", "reward_hacking",
           "easy_reward_only")


@dataclass
class HealthWarning:
    code: str
    message: str
    fix: str
    values: dict = field(default_factory=dict)

    def to_event(self) -> dict:
        return {"code": self.code, "message": self.message, "fix": self.fix, **self.values}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


class CollapseDetector:
    """Feed it each step's metrics; it returns the warnings that became true at that step.

    correctness_best: {reward name: score of a right answer} for the correctness terms (empty
    when the reward set has none: then only the no-signal warning applies). reward_names: every
    term, to name the one a drifting run chases.
    """

    def __init__(self, correctness_best: dict[str, float], reward_names: list[str]):
        self.best = dict(correctness_best)
        self.names = list(reward_names)
        self.history: deque[dict] = deque(maxlen=4 * WINDOW)
        self.correctness: list[float] = []       # share of best, one per step
        self.peak_window = None                  # best WINDOW-step mean of correctness so far
        self.zero_streak = 0
        self.start_means: dict[str, float] = {}  # each term's mean over the first WINDOW steps
        self.active: dict[str, int] = {}         # code -> step it became active
        self.clear: dict[str, int] = {}          # code -> steps in a row it has been false
        self.collapsed_since: int | None = None  # first step of the current serious episode

    def correctness_share(self, metrics: dict) -> float | None:
        shares = [metrics.get(f"rewards/{name}/mean") / best for name, best in self.best.items()
                  if best > 0 and metrics.get(f"rewards/{name}/mean") is not None]
        return _mean(shares) if shares else None

    def update(self, step: int, metrics: dict) -> list[HealthWarning]:
        share = self.correctness_share(metrics)
        self.history.append(metrics)
        if len(self.history) == WINDOW and not self.start_means:  # each term's first steps
            for name in self.names:
                values = [m.get(f"rewards/{name}/mean") for m in self.history]
                if None not in values:
                    self.start_means[name] = _mean(values)
        if share is not None:
            self.correctness.append(share)
            if len(self.correctness) >= WINDOW:
                recent = _mean(self.correctness[-WINDOW:])
                self.peak_window = recent if self.peak_window is None else max(self.peak_window,
                                                                               recent)
        all_same = (metrics.get("frac_reward_zero_std") or 0.0) >= 1.0
        self.zero_streak = self.zero_streak + 1 if all_same else 0

        found = [w for w in (self._entropy_collapse(metrics, share), self._no_signal(share),
                             self._reward_hacking(), self._correctness_falling(),
                             self._easy_reward_only()) if w]
        if any(w.code == "reward_hacking" for w in found):  # the more specific of the two
            found = [w for w in found if w.code != "correctness_falling"]
        now = {w.code for w in found}
        new = [w for w in found if w.code not in self.active]
        for code in list(self.active):  # a warning ends after WINDOW clear steps: no flapping
            self.clear[code] = 0 if code in now else self.clear.get(code, 0) + 1
            if self.clear[code] >= WINDOW:
                del self.active[code], self.clear[code]
        for w in new:
            self.active[w.code] = step
            w.values["step"] = step
        serious = set(self.active) & set(SERIOUS)
        if serious and self.collapsed_since is None:
            self.collapsed_since = step
        elif not serious:
            self.collapsed_since = None
        return new

    def persisted(self, step: int) -> int:
        """Steps the current collapse has lasted (0 when none is active)."""
        return 0 if self.collapsed_since is None else step - self.collapsed_since + 1

    # ---- the signals ---------------------------------------------------------------------
    def _recent_share(self, n: int = 3) -> float | None:
        return _mean(self.correctness[-n:]) if self.correctness else None

    def _entropy_collapse(self, metrics: dict, share: float | None) -> HealthWarning | None:
        entropy = metrics.get("entropy")
        recent = self._recent_share()
        if entropy is None or share is None or entropy >= ENTROPY_FLOOR or \
                recent >= LOW_CORRECTNESS:
            return None
        return HealthWarning(
            "entropy_collapse",
            f"The model stopped exploring: its answers are almost all the same (entropy "
            f"{entropy:.2f}) while only {recent:.0%} of the correctness score is earned.",
            "Lower the learning rate (about 2e-4), raise the temperature to 1.0, or set a small "
            "KL anchor (grpo.beta 0.04).",
            {"entropy": entropy, "correctness": recent})

    def _no_signal(self, share: float | None) -> HealthWarning | None:
        if self.zero_streak < NO_SIGNAL_STREAK:
            return None
        if share is not None and self._recent_share(self.zero_streak) >= MOSTLY_RIGHT:
            return None  # (nearly) every answer is right: little left to learn is no fault
        return HealthWarning(
            "no_signal",
            f"No learning signal for {self.zero_streak} steps: every answer in each group got "
            f"the same score, so there is nothing to compare.",
            "Raise the temperature or grpo.num_generations so that answers differ, or give "
            "partial credit in a reward.",
            {"streak": self.zero_streak})

    def _windows(self, key: str) -> tuple[float, float] | None:
        values = [m.get(key) for m in self.history]
        if len(values) < 2 * WINDOW or any(v is None for v in values[-2 * WINDOW:]):
            return None
        return _mean(values[-2 * WINDOW:-WINDOW]), _mean(values[-WINDOW:])

    def _reward_hacking(self) -> HealthWarning | None:
        if len(self.correctness) < 2 * WINDOW:
            return None
        before, after = _mean(self.correctness[-2 * WINDOW:-WINDOW]), \
            _mean(self.correctness[-WINDOW:])
        if before - after < HACK_FALL:
            return None
        rising = []
        for name in self.names:
            if name in self.best:
                continue
            pair = self._windows(f"rewards/{name}/mean")
            if pair and pair[1] - pair[0] >= HACK_RISE:
                rising.append((pair[1] - pair[0], name))
        if not rising:
            return None
        name = max(rising)[1]
        target = " and ".join(f"'{n}'" for n in self.best)
        return HealthWarning(
            "reward_hacking",
            f"'{name}' keeps rising while {target} falls ({before:.0%} to {after:.0%} of its "
            f"best): the model is learning the easy reward instead of the right answer.",
            f"Lower the weight of '{name}' or its partial credit, or lower the learning rate.",
            {"reward": name, "targets": list(self.best), "correctness_before": before,
             "correctness_after": after})

    def _easy_reward_only(self) -> HealthWarning | None:
        """Another reward, low at the start, is now earned in full while correctness stays low
        and stopped rising: the model learned what is easy (a format, a length) and nothing
        more, and that term no longer tells its answers apart."""
        if len(self.correctness) < STALL_AFTER:
            return None
        before, after = _mean(self.correctness[-STALL_AFTER:-STALL_AFTER // 2]), \
            _mean(self.correctness[-STALL_AFTER // 2:])
        if after >= LOW_CORRECTNESS or after - before >= STALL_RISE:
            return None
        learned = []
        for name in self.names:
            start = self.start_means.get(name)
            if name in self.best or start is None or start >= EASY_HIGH - HACK_RISE:
                continue  # a correctness term, or one earned from the start (nothing learned)
            recent = [m.get(f"rewards/{name}/mean") for m in list(self.history)[-WINDOW:]]
            if None not in recent and _mean(recent) >= EASY_HIGH:
                learned.append((_mean(recent), name))
        if not learned:
            return None
        name = max(learned)[1]
        target = " and ".join(f"'{n}'" for n in self.best)
        return HealthWarning(
            "easy_reward_only",
            f"The model learned '{name}' (now earned in full), but {target} stays at "
            f"{after:.0%} of its best and stopped rising: it learned the easy part, not the "
            f"right answer.",
            f"Lower the weight of '{name}' (it no longer tells answers apart), raise the "
            f"temperature to 1.0, or try a larger model.",
            {"reward": name, "targets": list(self.best), "correctness": after})

    def _correctness_falling(self) -> HealthWarning | None:
        if self.peak_window is None or len(self.correctness) < 2 * WINDOW:
            return None
        recent = _mean(self.correctness[-WINDOW:])
        if self.peak_window - recent < FALL_FROM_PEAK:
            return None
        return HealthWarning(
            "correctness_falling",
            f"Right answers fell from {self.peak_window:.0%} to {recent:.0%} of the best score: "
            f"the model is unlearning what it had found.",
            "Lower the learning rate (about 2e-4) or set a small KL anchor (grpo.beta 0.04); "
            "the checkpoint from before the fall holds the better model.",
            {"peak": self.peak_window, "correctness": recent})


# ---- settings far from what kept the classroom demo learning ---------------------------------
# From bench/learning_study.py (README, "Settings that keep learning"): with LoRA on the built-in
# model, learning rates up to STABLE_LR_MAX and temperatures from MIN_TEMPERATURE kept learning
# over 40 and 100 steps on 3 seeds; 1e-3 at temperature 0.7 collapsed.
STABLE_LR_MAX = 5e-4
MIN_TEMPERATURE = 0.8
MIN_GENERATIONS = 4


def settings_advice(cfg) -> list[dict]:
    """Settings outside the region where runs kept learning: [{setting, value, message, fix}],
    one plain line each (`value`: the setting's, for the studio to say it in the page's
    language). Advice, not errors: a run may still start."""
    out = []
    lr, temperature, group = cfg.train.learning_rate, cfg.grpo.temperature, \
        cfg.grpo.num_generations
    if lr > STABLE_LR_MAX:
        strength = "far above" if lr >= 10 * STABLE_LR_MAX else "above"
        out.append({"setting": "train.learning_rate", "value": lr, "message": (
            f"Learning rate {lr:g} is {strength} what kept runs learning (up to "
            f"{STABLE_LR_MAX:g}): the reward may rise, then collapse."),
            "fix": "A learning rate of 2e-4."})
    if temperature < MIN_TEMPERATURE:
        out.append({"setting": "grpo.temperature", "value": temperature, "message": (
            f"Temperature {temperature:g} makes the answers of a group alike, and GRPO learns "
            f"only from their differences."),
            "fix": f"A temperature from {MIN_TEMPERATURE:g} to 1.0."})
    if group < MIN_GENERATIONS:
        out.append({"setting": "grpo.num_generations", "value": group, "message": (
            f"With {group} answers per question a group often scores all the same, which "
            f"teaches nothing."),
            "fix": f"{MIN_GENERATIONS} or more answers per question."})
    return out
