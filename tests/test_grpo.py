"""GRPO math against values worked out by hand (see the comments for the arithmetic)."""
import math

import pytest
import torch

from core.grpo import LossSettings, compute_advantages, kl_k3, policy_loss

LN = math.log


def test_advantages_group_scaling():
    # groups [1, 0] and [0, 1]: mean 0.5, unbiased std sqrt(0.5)
    adv, m = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, "group")
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]))
    assert m["reward"] == pytest.approx(0.5)
    assert m["reward_std"] == pytest.approx(math.sqrt(0.5))
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
    assert m["kl"] == pytest.approx(kl_mean)
    assert loss.item() == pytest.approx(0.5 * kl_mean)
    with pytest.raises(ValueError):
        policy_loss(logps, None, None, torch.tensor([0.0]), torch.ones(1, 2), s)
