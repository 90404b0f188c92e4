"""The coherent reward, from two tensors of per-token log-probs (pure torch, no OpenRLHF).

SRPPO (paper eq. 3-4) scores a response y to a prompt x with

    r(x, y) = log p_SFT(y|x) - log p_base(y|x) = sum_j [log p_SFT(y_j|.) - log p_base(y_j|.)]

summed over response tokens only, and gives it at the EOS token, or at the last response token
when the response was truncated. Placement is OpenRLHF's job: `openrlhf.models.utils.
compute_reward` puts a per-sequence scalar on the last position of `action_mask`, which is the
EOS token for a finished response and the last generated token for a truncated one. This module
only turns log-probs into that scalar (or, for the token-wise variant, eq. 8, into per-token
rewards).

All inputs are (batch, num_actions) tensors aligned with OpenRLHF's `action_mask`
(`sequences[:, 1:]`'s response positions). Masks are applied exactly: positions where the mask
is 0 contribute nothing, whatever value the log-prob tensors hold there (padding on either side).
Arithmetic is fp32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

REWARD_TYPES = ("sequence", "token")
AGGREGATES = ("sum", "mean")


class NonFiniteLogProbs(ValueError):
    """A model produced NaN or infinite log-probs on response tokens: a reward made from them would
    be NaN (or infinite) and PPO would train on it, so the step stops and names the model."""


def check_finite_log_probs(log_probs: torch.Tensor, action_mask: torch.Tensor, source: str) -> None:
    """Raise NonFiniteLogProbs naming `source` if a response position (mask 1) is NaN or infinite."""
    bad = action_mask.bool() & ~torch.isfinite(log_probs)
    if bad.any():
        rows = bad.any(dim=-1).nonzero().flatten().tolist()
        raise NonFiniteLogProbs(
            f"{source} produced non-finite log-probs (NaN or inf) on {int(bad.sum())} response tokens of "
            f"samples {rows[:20]} of the batch: the coherent reward would be NaN; stopping. Check that "
            "model's weights and --ds.param_dtype"
        )


@dataclass
class CoherentReward:
    """The reward of a batch of responses and the terms it is made of (all fp32)."""

    reward: torch.Tensor  # (B,) what PPO trains on at the EOS/last token; 0 for the token-wise variant
    token_rewards: Optional[torch.Tensor]  # (B, A) per-token rewards of the token-wise variant, else None
    log_ratio_sum: torch.Tensor  # (B,) sum_j (log p_SFT - log p_base), after optional per-token clipping
    sft_log_prob: torch.Tensor  # (B,) log p_SFT(y|x), summed over response tokens
    base_log_prob: torch.Tensor  # (B,) log p_base(y|x), summed over response tokens
    length: torch.Tensor  # (B,) number of response tokens (action_mask.sum)


def coherent_reward(
    sft_log_probs: torch.Tensor,
    base_log_probs: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    reward_type: str = "sequence",
    aggregate: str = "sum",
    scale: float = 1.0,
    token_clip: Optional[float] = None,
    check_finite: bool = True,
) -> CoherentReward:
    """Coherent reward of each response.

    reward_type: "sequence" (paper eq. 3-4, the default) or "token" (eq. 8: each response token
        is rewarded with its own log-ratio; the paper reports unbounded length growth with it).
    aggregate: "sum" (paper) or "mean" (divide by the number of response tokens, a length
        normalisation; for the token-wise variant each token's reward is divided by the length).
    scale: multiplies the reward (after aggregation).
    token_clip: if set, clamp each token's log-ratio to [-token_clip, token_clip] before
        aggregating: bounds what a single very unlikely-under-base token can contribute.
    check_finite: raise NonFiniteLogProbs when a response position of either term is NaN/inf
        (PPO must not train on it). The offline tools pass False and report such rows by line.
    """
    if reward_type not in REWARD_TYPES:
        raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if not (sft_log_probs.shape == base_log_probs.shape == action_mask.shape):
        raise ValueError(
            "sft_log_probs, base_log_probs and action_mask must have the same shape, got "
            f"{tuple(sft_log_probs.shape)}, {tuple(base_log_probs.shape)}, {tuple(action_mask.shape)}"
        )

    if check_finite:
        sft_source = "log p_SFT: the SFT model (or OpenRLHF's reference model, when its log-probs are reused)"
        check_finite_log_probs(sft_log_probs, action_mask, sft_source)
        check_finite_log_probs(base_log_probs, action_mask, "log p_base: the base model")
    mask = action_mask.to(torch.float32)
    # where() rather than multiply: a -inf or NaN log-prob at a padded position must not leak.
    sft = torch.where(action_mask.bool(), sft_log_probs.to(torch.float32), 0.0)
    base = torch.where(action_mask.bool(), base_log_probs.to(torch.float32), 0.0)
    log_ratio = sft - base
    if token_clip is not None:
        log_ratio = log_ratio.clamp(-token_clip, token_clip) * mask

    length = mask.sum(dim=-1)
    divisor = length.clamp(min=1.0) if aggregate == "mean" else torch.ones_like(length)
    log_ratio_sum = log_ratio.sum(dim=-1)

    if reward_type == "token":
        token_rewards = scale * log_ratio / divisor.unsqueeze(-1)
        reward = torch.zeros_like(length)
    else:
        token_rewards = None
        reward = scale * log_ratio_sum / divisor

    return CoherentReward(
        reward=reward,
        token_rewards=token_rewards,
        log_ratio_sum=log_ratio_sum,
        sft_log_prob=sft.sum(dim=-1),
        base_log_prob=base.sum(dim=-1),
        length=length,
    )
