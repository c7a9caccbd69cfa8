"""The collapse detector on step metrics shaped like the ones the trainer writes."""
import pytest

from core.health import (ENTROPY_FLOOR, NO_SIGNAL_STREAK, WINDOW, CollapseDetector,
                         settings_advice)
from core.config import RunConfig

NAMES = ["numeric_match", "length_target"]


def step(correct, length=1.0, entropy=1.0, zero_spread=0.0):
    return {"rewards/numeric_match/mean": correct, "rewards/length_target/mean": length,
            "entropy": entropy, "frac_reward_zero_std": zero_spread,
            "reward": correct + 0.5 * length}


def feed(steps, best=1.0):
    detector = CollapseDetector({"numeric_match": best}, NAMES)
    raised = []
    for i, m in enumerate(steps, start=1):
        raised += [(i, w.code) for w in detector.update(i, m)]
    return detector, raised


def test_a_run_that_learns_raises_nothing():
    # correctness climbs, entropy falls only as the answers become right, spread comes and goes
    curve = [step(0.1 + 0.03 * i, entropy=max(0.02, 1.2 - 0.04 * i),
                  zero_spread=0.25 if i % 3 else 0.5) for i in range(30)]
    curve += [step(1.0, entropy=0.02, zero_spread=1.0) for _ in range(10)]  # all right: done
    _, raised = feed(curve)
    assert raised == []


def test_entropy_collapse_while_answers_are_wrong():
    curve = [step(0.3, entropy=1.0)] * 3 + [step(0.15, entropy=ENTROPY_FLOOR / 2)] * 3
    _, raised = feed(curve)
    assert (5, "entropy_collapse") in raised or (4, "entropy_collapse") in raised
    # the same low entropy with right answers is a model that has learned, not a collapse
    _, raised = feed([step(0.9, entropy=0.02)] * 8)
    assert raised == []


def test_no_signal_streak_only_when_answers_are_not_all_right():
    wrong = [step(0.1, entropy=0.5, zero_spread=1.0)] * NO_SIGNAL_STREAK
    _, raised = feed([step(0.3)] + wrong)
    assert raised == [(1 + NO_SIGNAL_STREAK, "no_signal")]
    _, raised = feed([step(0.3)] + [step(0.1, zero_spread=1.0)] * (NO_SIGNAL_STREAK - 1)
                     + [step(0.1, zero_spread=0.75)])
    assert raised == []
    _, raised = feed([step(1.0, entropy=0.5, zero_spread=1.0)] * 6)
    assert raised == []


def test_correctness_falling_from_its_peak():
    # the shape the issue reports: rises to 0.85, then falls to the 0.1 partial credit
    curve = [step(0.2), step(0.6)] + [step(0.85)] * 6 + [step(0.1)] * 8
    detector, raised = feed(curve)
    assert [code for _, code in raised] == ["correctness_falling"]
    assert detector.persisted(len(curve)) > 0


def test_one_reward_rising_while_correctness_falls_is_named():
    curve = [step(0.7, length=0.3)] * WINDOW + [step(0.3, length=0.9)] * WINDOW
    _, raised = feed(curve)
    assert [code for _, code in raised] == ["reward_hacking"]
    detector = CollapseDetector({"numeric_match": 1.0}, NAMES)
    for i, m in enumerate(curve + [step(0.3, length=0.9)] * 2, start=1):
        found = detector.update(i, m)
    assert not found and "reward_hacking" in detector.active  # raised once, not every step
    for i in range(len(curve) + 1, len(curve) + 2 * WINDOW + 1):
        detector.update(i, step(0.8, length=0.9))
    assert detector.active == {} and detector.persisted(i) == 0


def test_an_easy_reward_learned_while_correctness_stalls_is_named():
    # the second example at temperature 0.8 (bench/learning_study.py): the closing sentence,
    # a format reward, went from 0.1 to 1.0 while the right number stayed at about 0.15
    curve = [step(0.15, length=0.1 + 0.08 * i) for i in range(12)] + [step(0.15, length=1.0)] * 14
    _, raised = feed(curve)
    assert [code for _, code in raised] == ["easy_reward_only"]
    assert raised[0][0] == 20  # judged only after 4 windows
    # a term earned from the start was not learned: no warning (the example's length reward)
    _, raised = feed([step(0.15, length=0.95)] * 30)
    assert raised == []
    # nor while correctness still rises, however slowly
    _, raised = feed([step(0.1 + 0.01 * i, length=0.1 + 0.08 * i) for i in range(12)]
                     + [step(0.22 + 0.01 * i, length=1.0) for i in range(18)])
    assert raised == []


def test_messages_are_one_line_with_a_fix():
    curve = [step(0.2), step(0.6)] + [step(0.85)] * 6 + [step(0.1, entropy=0.01,
                                                               zero_spread=1.0)] * 8
    detector = CollapseDetector({"numeric_match": 1.0}, NAMES)
    seen = {}
    for i, m in enumerate(curve, start=1):
        for w in detector.update(i, m):
            seen[w.code] = w.to_event()
    assert set(seen) == {"entropy_collapse", "no_signal", "correctness_falling"}
    for event in seen.values():
        assert "\n" not in event["message"] and event["fix"] and event["step"] >= 1


def test_correct_score_scales_the_thresholds():
    # a correct_score of 2 doubles every correctness value: the same run, the same verdict
    curve = [step(0.4), step(1.2)] + [step(1.7)] * 6 + [step(0.2)] * 8
    _, raised = feed(curve, best=2.0)
    assert [code for _, code in raised] == ["correctness_falling"]


def test_without_a_correctness_reward_only_no_signal_applies():
    detector = CollapseDetector({}, ["length_target"])
    codes = []
    for i in range(1, 8):
        codes += [w.code for w in detector.update(i, {"rewards/length_target/mean": 0.5,
                                                       "entropy": 0.01,
                                                       "frac_reward_zero_std": 1.0})]
    assert codes == ["no_signal"]


@pytest.mark.parametrize("overrides, expected", [
    ({}, []),
    ({"train": {"learning_rate": 5e-3}}, ["learning_rate"]),
    ({"grpo": {"temperature": 0.5}}, ["temperature"]),
    ({"grpo": {"num_generations": 2}}, ["num_generations"]),
])
def test_settings_advice(overrides, expected):
    base = {"rewards": [{"template": "numeric_match"}]}
    cfg = RunConfig.from_dict({**base, **overrides})
    advice = settings_advice(cfg)
    assert [a["setting"].split(".")[-1] for a in advice] == expected
    for a in advice:
        assert a["message"] and "\n" not in a["message"]
