"""GRPO math against values worked out by hand (see the comments for the arithmetic)."""
import math

import pytest
import torch

from core.grpo import LossSettings, StepMetrics, compute_advantages, kl_k3, policy_loss

LN = math.log


def test_advantages_group_scaling():
    # groups [1, 0] and [0, 1]: mean 0.5, unbiased std sqrt(0.5)
    adv, m = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, "group")
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]))
    assert m["reward"] == pytest.approx(0.5)
    assert m["reward_group_std"] == pytest.approx(math.sqrt(0.5))  # ours: mean spread in a group
    assert m["reward_std"] == pytest.approx(math.sqrt(1 / 3))       # TRL's: std of the batch
    assert m["frac_reward_zero_std"] == 0.0


def test_advantages_batch_and_none():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv, _ = compute_advantages(r, 2, "none")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    adv, _ = compute_advantages(r, 2, "batch")  # batch std sqrt(1/3)
    e = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(adv, torch.tensor([e, -e, -e, e]))


def test_advantages_equal_rewards_give_zero_and_count():
    adv, m = compute_advantages(torch.tensor([2.0, 2.0, 1.0, 3.0]), 2, "group")
    assert adv[:2].abs().max() == 0
    assert m["frac_reward_zero_std"] == 0.5


def test_advantages_reject_bad_shapes():
    with pytest.raises(ValueError):
        compute_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError):
        compute_advantages(torch.ones(4), 2, "sometimes")


def _case():
    """Two completions, three tokens; the second has a padded last token.

    seq 0: ratios 1, 1.5, 0.5 with advantage +1; seq 1: ratios 1.1, 1, 0.7 with advantage -1.
    """
    old = torch.zeros(2, 3)
    logps = torch.tensor([[0.0, LN(1.5), LN(0.5)], [LN(1.1), 0.0, LN(0.7)]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logps, old, adv, mask


# per-token losses with epsilon 0.2: seq 0: -1, -min(1.5, 1.2) = -1.2, -min(0.5, 0.8) = -0.5;
# seq 1: max(1.1, 1.1) = 1.1, 1, (masked). Sum -0.6 over 5 tokens.
@pytest.mark.parametrize("loss_type,num_items,expected", [
    ("grpo", None, (-2.7 / 3 + 2.1 / 2) / 2),  # mean of sequence means = 0.075
    ("bnpo", None, -0.6 / 5),
    ("dr_grpo", None, -0.6 / (2 * 4)),         # B * max_completion_length
    ("dapo", 10, -0.6 / 10),                   # tokens of the whole step
    ("dapo", None, -0.6 / 5),
])
def test_policy_loss_each_type(loss_type, num_items, expected):
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type=loss_type, epsilon=0.2, max_completion_length=4)
    loss, m = policy_loss(logps, old, None, adv, mask, s, num_items_in_batch=num_items)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    m = m.result()
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 5)  # the 1.5 token, advantage > 0
    assert m["clip_ratio/low_mean"] == 0.0                    # the 0.7 token is padding
    assert m["clip_ratio/region_mean"] == pytest.approx(1 / 5)


def test_policy_loss_gradients_grpo():
    logps, old, adv, mask = _case()
    loss, _ = policy_loss(logps, old, None, adv, mask, LossSettings(loss_type="grpo"))
    loss.backward()
    # d(-r A)/d logp = -r A, divided by tokens of the sequence and by 2 sequences; the clipped
    # token (1.5) and the padded token get no gradient.
    expected = torch.tensor([[-1 / 6, 0.0, -0.5 / 6], [1.1 / 4, 1 / 4, 0.0]])
    assert torch.allclose(logps.grad, expected, atol=1e-6)


def test_epsilon_high_widens_upper_clip():
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="bnpo", epsilon=0.2, epsilon_high=0.6)
    loss, m = policy_loss(logps, old, None, adv, mask, s)
    m = m.result()
    # the 1.5 ratio is now inside [0.8, 1.6]: -1.5 instead of -1.2
    assert loss.item() == pytest.approx((-1 - 1.5 - 0.5 + 1.1 + 1) / 5)
    assert m["clip_ratio/high_mean"] == 0.0


def test_sequence_level_importance_sampling():
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="grpo", importance_sampling_level="sequence")
    loss, _ = policy_loss(logps, old, None, adv, mask, s)
    s0 = 0.75 ** (1 / 3)   # exp(mean(log 1, log 1.5, log 0.5)), inside the clip range
    s1 = 1.1 ** 0.5        # exp(mean(log 1.1, log 1)): the padded token does not count
    assert loss.item() == pytest.approx((-s0 + s1) / 2, abs=1e-6)


def test_no_old_logps_means_ratio_one_with_gradient():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss(logps, None, None, torch.tensor([2.0]), torch.ones(1, 2),
                          LossSettings(loss_type="grpo"))
    assert loss.item() == pytest.approx(-2.0)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([[-1.0, -1.0]]))


def test_kl_k3_values_and_beta_term():
    d = torch.tensor([LN(2.0), 0.0])
    assert torch.allclose(kl_k3(torch.zeros(2), d), torch.tensor([2 - LN(2) - 1, 0.0]))
    logps = torch.zeros(1, 2)
    ref = torch.tensor([[LN(2.0), 0.0]])
    s = LossSettings(loss_type="bnpo", beta=0.5)
    loss, m = policy_loss(logps, None, ref, torch.tensor([0.0]), torch.ones(1, 2), s)
    kl_mean = (2 - LN(2) - 1) / 2
    assert m.result()["kl"] == pytest.approx(kl_mean)
    assert loss.item() == pytest.approx(0.5 * kl_mean)
    with pytest.raises(ValueError):
        policy_loss(logps, None, None, torch.tensor([0.0]), torch.ones(1, 2), s)


def test_rloo_leave_one_out_baseline():
    # group [3, 1, 2]: baselines (1+2)/2 = 1.5, (3+2)/2 = 2.5, (3+1)/2 = 2
    adv, m = compute_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, "none", "rloo")
    assert torch.allclose(adv, torch.tensor([1.5, -1.5, 0.0]))
    # = G/(G-1) times the group-mean advantage (1, -1, 0)
    grpo, _ = compute_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, "none", "grpo")
    assert torch.allclose(adv, grpo * 3 / 2)
    with pytest.raises(ValueError):
        compute_advantages(torch.ones(4), 2, "none", "ppo")


def test_metrics_do_not_depend_on_the_passes():
    """The same rows in one pass or in two give the same means (a pass's mean is not weighted by
    its rows), the smallest low-clip share per answer and the largest high-clip share."""
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="dapo", beta=0.1)
    ref = torch.full((2, 3), -0.2)
    _, whole = policy_loss(logps, old, ref, adv, mask, s, num_items_in_batch=5)
    parts = StepMetrics()
    for rows in (slice(0, 1), slice(1, 2)):
        _, m = policy_loss(logps[rows], old[rows], ref[rows], adv[rows], mask[rows], s,
                           num_items_in_batch=5)
        parts.merge(m)
    a, b = whole.result(), parts.result()
    assert a.keys() == b.keys() and "kl" in a
    for k in a:
        assert a[k] == pytest.approx(b[k]), k
    # region mean: 1 clipped token of 5 (a mean of pass means would say (1/3 + 0/2) / 2 = 1/6)
    assert b["clip_ratio/region_mean"] == pytest.approx(1 / 5)
    assert b["clip_ratio/high_max"] == pytest.approx(1 / 3)  # answer 0: 1 of its 3 tokens
    assert b["clip_ratio/low_min"] == 0.0


def test_bias_corrected_kl_gradient():
    # one token, on-policy, p = 0, ref = ln 2, d = ref - p: the k3 value e^d - d - 1 is the same
    # either way (the ratio is 1); its gradient is 1 - e^d = -1 plain, and with the ratio's
    # gradient added (kl * 1) it is 1 - e^d + e^d - d - 1 = -d = -ln 2.
    for corrected, grad in ((False, -1.0), (True, -LN(2))):
        logps = torch.zeros(1, 1, requires_grad=True)
        s = LossSettings(loss_type="bnpo", beta=1.0, use_bias_correction_kl=corrected)
        loss, m = policy_loss(logps, None, torch.tensor([[LN(2)]]), torch.tensor([0.0]),
                              torch.ones(1, 1), s)
        assert loss.item() == pytest.approx(2 - LN(2) - 1)
        loss.backward()
        assert logps.grad.item() == pytest.approx(grad)


def test_cispo_clips_the_weight_not_the_surrogate():
    # ratios 1, 1.5, 0.5 | 1.1, 1; epsilon_high 1.2 caps only the 1.5 (at 1.2). Loss per token
    # -min(r, 1.2) * A * logp, summed over 5 tokens / 5; the gradient is -min(r, 1.2) * A / 5.
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="cispo", epsilon_high=1.2)
    loss, m = policy_loss(logps, old, None, adv, mask, s, num_items_in_batch=5)
    lp = logps.detach()
    per = [-1 * lp[0, 0], -1.2 * lp[0, 1], -0.5 * lp[0, 2], 1.1 * lp[1, 0], 1.0 * lp[1, 1]]
    assert loss.item() == pytest.approx(sum(per).item() / 5, abs=1e-6)
    loss.backward()
    expected = torch.tensor([[-1, -1.2, -0.5], [1.1, 1.0, 0.0]]) / 5
    assert torch.allclose(logps.grad, expected, atol=1e-6)
    assert m.result()["cispo_clip_ratio"] == pytest.approx(1 / 5)


def test_sapo_soft_gate():
    # per token -sigmoid(tau (r - 1)) * 4 / tau * A, tau 1 for A > 0 and 1.05 otherwise; at r = 1
    # the gate is sigmoid(0) * 4 = 2 (its slope there is 1: the plain policy gradient).
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="sapo")
    loss, _ = policy_loss(logps, old, None, adv, mask, s)

    def gate(r, tau):
        return 1 / (1 + math.exp(-tau * (r - 1))) * 4 / tau

    seq0 = -(gate(1, 1) + gate(1.5, 1) + gate(0.5, 1)) / 3
    seq1 = (gate(1.1, 1.05) + gate(1.0, 1.05)) / 2
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    logps = torch.zeros(1, 1, requires_grad=True)
    policy_loss(logps, None, None, torch.tensor([1.0]), torch.ones(1, 1), s)[0].backward()
    assert logps.grad.item() == pytest.approx(-1.0)


def test_luspo_weighs_answers_by_length():
    # sequence level: s0 = 0.75^(1/3) inside the clip range, s1 = 1.1^(1/2); each answer's loss
    # is summed over its tokens (3 and 2), then averaged over the 2 answers
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="luspo", importance_sampling_level="sequence")
    loss, _ = policy_loss(logps, old, None, adv, mask, s)
    s0, s1 = 0.75 ** (1 / 3), 1.1 ** 0.5
    assert loss.item() == pytest.approx((-3 * s0 + 2 * s1) / 2, abs=1e-6)


def test_vespo_gamma_weights():
    # w per answer = product of its ratios: 0.75 (A = +1: k 2, lam 3), 1.1 (A = -1: k 3, lam 2);
    # phi(w) = e^lam w^k e^(-lam w); the loss -phi * A * logp over the 5 tokens of the step
    logps, old, adv, mask = _case()
    s = LossSettings(loss_type="vespo")
    loss, m = policy_loss(logps, old, None, adv, mask, s, num_items_in_batch=5)
    phi0 = math.exp(3) * 0.75 ** 2 * math.exp(-3 * 0.75)
    phi1 = math.exp(2) * 1.1 ** 3 * math.exp(-2 * 1.1)
    lp = logps.detach()
    expected = (-phi0 * lp[0].sum() + phi1 * lp[1, :2].sum()) / 5
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert m.result()["vespo/phi_seq_mean"] == pytest.approx((phi0 + phi1) / 2)
    loss.backward()  # phi is a coefficient: the gradient is -phi * A / 5 per token
    assert torch.allclose(logps.grad, torch.tensor([[-phi0, -phi0, -phi0], [phi1, phi1, 0]]) / 5,
                          atol=1e-6)


def test_cispo_without_its_cap_is_refused_in_one_line():
    from core.config import ConfigError, RunConfig
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"grpo": {"loss_type": "cispo"}}).validate()
    assert "epsilon_high" in str(exc.value) and "5.0" in str(exc.value)
    RunConfig.from_dict({"grpo": {"loss_type": "cispo", "epsilon_high": 5.0}}).validate()


def test_sampler_ratio_modes():
    from core.grpo import sampler_ratio
    # trainer minus sampler log-probs: answer 0: ln 2, ln 2, 0; answer 1: ln 4, (padding), NaN
    old = torch.tensor([[LN(2), LN(2), 0.0], [LN(4), 5.0, 0.0]])
    sampled = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    tok = sampler_ratio(old, sampled, mask, "token_truncate", None, 3.0)
    assert torch.allclose(tok, torch.tensor([[2.0, 2.0, 1.0], [3.0, 1.0, 1.0]]))  # 4 -> 3
    assert torch.allclose(sampler_ratio(old, sampled, mask, "token_mask", 0.5, 3.0),
                          torch.tensor([[2.0, 2.0, 1.0], [0.0, 1.0, 1.0]]))   # 4 > 3: zeroed
    # per answer: exp(ln 2 + ln 2) = 4 and exp(ln 4) = 4, outside [.., 3]
    assert torch.allclose(sampler_ratio(old, sampled, mask, "sequence_truncate", None, 3.0),
                          torch.tensor([[3.0], [3.0]]))
    assert torch.allclose(sampler_ratio(old, sampled, mask, "sequence_mask", None, 5.0),
                          torch.tensor([[4.0], [4.0]]))
    assert torch.allclose(sampler_ratio(old, sampled, mask, "sequence_mask", None, 3.0),
                          torch.zeros(2, 1))


def test_sampler_correction_weighs_the_policy_loss_not_the_kl():
    # one on-policy token, A = 1, correction 0.5: loss -0.5 (ratio 1 x A x 0.5) + beta * kl
    logps = torch.zeros(1, 1, requires_grad=True)
    s = LossSettings(loss_type="bnpo", beta=1.0, use_bias_correction_kl=False)
    loss, m = policy_loss(logps, None, torch.tensor([[LN(2)]]), torch.tensor([1.0]),
                          torch.ones(1, 1), s, is_ratio=torch.tensor([[0.5]]))
    assert loss.item() == pytest.approx(-0.5 + (2 - LN(2) - 1))
    r = m.result()
    assert r["sampling/importance_sampling_ratio/mean"] == pytest.approx(0.5)
    assert r["sampling/importance_sampling_ratio/min"] == r["sampling/importance_sampling_ratio/max"] == 0.5
