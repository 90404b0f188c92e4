"""The reward math against hand-computed values (pure torch; OpenRLHF only for its placement)."""

import math

import pytest
import torch

from openrlhf_coherent.reward import coherent_reward

# Two responses of different lengths in one batch, right-padded (OpenRLHF's action_mask layout):
# row 0 has 3 response tokens, the last being EOS; row 1 has 2 and was truncated.
SFT = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.25, -3.0, 0.0, 0.0]])
BASE = torch.tensor([[-2.0, -2.5, -4.0, 0.0], [-1.25, -1.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
# By hand: row 0: (-1+2) + (-2+2.5) + (-0.5+4) = 1 + 0.5 + 3.5 = 5.0 ; row 1: 1.0 + (-2.0) = -1.0
EXPECTED_SUM = torch.tensor([5.0, -1.0])


def test_sequence_reward_is_the_masked_sum_of_log_ratios():
    r = coherent_reward(SFT, BASE, MASK)
    torch.testing.assert_close(r.reward, EXPECTED_SUM)
    torch.testing.assert_close(r.sft_log_prob, torch.tensor([-3.5, -3.25]))
    torch.testing.assert_close(r.base_log_prob, torch.tensor([-8.5, -2.25]))
    torch.testing.assert_close(r.length, torch.tensor([3.0, 2.0]))
    assert r.token_rewards is None
    assert r.reward.dtype == torch.float32


def test_left_padding_and_garbage_at_masked_positions_do_not_leak():
    # Same responses, left-padded, with -inf / nan at padded positions (as an unmasked model may give).
    sft = torch.tensor([[float("-inf"), -1.0, -2.0, -0.5], [float("nan"), float("nan"), -0.25, -3.0]])
    base = torch.tensor([[7.0, -2.0, -2.5, -4.0], [float("-inf"), 3.0, -1.25, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    r = coherent_reward(sft, base, mask)
    torch.testing.assert_close(r.reward, EXPECTED_SUM)


def test_bf16_inputs_are_accumulated_in_fp32():
    r = coherent_reward(SFT.bfloat16(), BASE.bfloat16(), MASK)
    assert r.reward.dtype == torch.float32
    torch.testing.assert_close(r.reward, EXPECTED_SUM)


def test_mean_aggregate_divides_by_response_length_and_scale_multiplies():
    r = coherent_reward(SFT, BASE, MASK, aggregate="mean", scale=2.0)
    torch.testing.assert_close(r.reward, torch.tensor([2.0 * 5.0 / 3, 2.0 * -1.0 / 2]))
    # the logged terms stay unnormalised
    torch.testing.assert_close(r.log_ratio_sum, EXPECTED_SUM)


def test_token_clip_bounds_each_token_before_the_sum():
    r = coherent_reward(SFT, BASE, MASK, token_clip=1.0)
    # row 0 tokens 1, 0.5, 3.5 -> 1, 0.5, 1 ; row 1 tokens 1, -2 -> 1, -1
    torch.testing.assert_close(r.reward, torch.tensor([2.5, 0.0]))


def test_token_wise_variant_puts_each_log_ratio_on_its_token():
    r = coherent_reward(SFT, BASE, MASK, reward_type="token")
    torch.testing.assert_close(r.token_rewards, torch.tensor([[1.0, 0.5, 3.5, 0.0], [1.0, -2.0, 0.0, 0.0]]))
    torch.testing.assert_close(r.reward, torch.zeros(2))  # nothing extra at EOS
    r_mean = coherent_reward(SFT, BASE, MASK, reward_type="token", aggregate="mean")
    torch.testing.assert_close(r_mean.token_rewards.sum(-1), torch.tensor([5.0 / 3, -0.5]))


def test_empty_response_gets_zero_not_nan():
    mask = torch.zeros(1, 3, dtype=torch.long)
    r = coherent_reward(torch.zeros(1, 3), torch.zeros(1, 3), mask, aggregate="mean")
    assert r.reward.item() == 0.0 and not math.isnan(r.reward.item())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        coherent_reward(SFT, BASE[:, :3], MASK)
    with pytest.raises(ValueError, match="reward_type"):
        coherent_reward(SFT, BASE, MASK, reward_type="tokens")
    with pytest.raises(ValueError, match="aggregate"):
        coherent_reward(SFT, BASE, MASK, aggregate="max")


def test_openrlhf_places_the_reward_on_eos_or_the_last_truncated_token():
    """Paper eq. 4 through OpenRLHF's own placement (compute_reward), with the KL term off."""
    from openrlhf.models.utils import compute_reward

    r = coherent_reward(SFT, BASE, MASK)
    placed = compute_reward(r.reward, 0.0, torch.zeros(2, 4), action_mask=MASK, reward_clip_range=None)
    # row 0: EOS at position 2 ; row 1: truncated, last response token at position 1
    torch.testing.assert_close(placed, torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, -1.0, 0.0, 0.0]]))
    # OpenRLHF's default clip range (-10, 10) would have clipped a larger reward silently:
    clipped = compute_reward(r.reward * 10, 0.0, torch.zeros(2, 4), action_mask=MASK, reward_clip_range=(-10, 10))
    assert clipped[0, 2].item() == 10.0
