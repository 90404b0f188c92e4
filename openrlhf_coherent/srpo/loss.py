"""The SRPO sample loss (Choi et al., "Self-Improving Robust Preference Optimization", sec. 4.3).

One model both generates, pi(y|x), and revises, pi_dagger(y'|y, x) = pi(y' | R(x, y)) with R the
revision prompt (templates.py). Per preference pair (x, y_w, y_l) the loss needs the log-prob of
six sequences under the policy and under the frozen reference; their column order here is
`SEQUENCES`:

    w|x = log pi(y_w | x)            l|x = log pi(y_l | x)            (0-revision)
    w|l = log pi(y_w | R(x, y_l))    l|w = log pi(y_l | R(x, y_w))    (revise into the other)
    l|l = log pi(y_l | R(x, y_l))    w|w = log pi(y_w | R(x, y_w))    (revise into itself)

With rho(s) = log pi(s) - log pi_ref(s) for each sequence s, and indicator labels (y_w won):

  eq. 16 (joint, generative + self-improvement):
      L      = ( beta * [rho(w|l) + rho(w|x) - rho(l|w) - rho(l|x)] - 1 )^2
  eq. 15 (self-improvement only):
      L_dag  = ( 1/2 - beta * [rho(w|l) - rho(l|l)] )^2 + ( 1/2 - beta * [rho(w|w) - rho(l|w)] )^2
  eq. 17:
      L_alpha = (1 - alpha) * L + alpha * L_dag           (alpha = 1: self-improvement only)

Which equations the code follows, and why (the printed paper has typos):
- Eq. 16 and eq. 15 as printed are used. They follow from eq. 5 and eq. 9, re-derived:
  eq. 5 gives  p(y'>y)/beta = log[pi*_dag(y'|y)/pi_ref(y'|y)] + log Z(y)   (eq. 7 prints an
  extra beta on log Z; eq. 12 prints -log pi_ref where it is +). Minimising eq. 6 over pi gives
  pi*(y) = pi_ref(y) / (Z(y) Z(x)) (eq. 11/13), i.e. log Z(y) = -rho*(y) - log Z(x). Writing
  this for (y', y) and (y, y'), subtracting, and using p(y>y') = 1 - p(y'>y):
      2 p(y'>y) - 1 = beta * [ rho_dag(y'|y) + rho(y') - rho_dag(y|y') - rho(y) ]
  so the improved completion's revision term pi_dag(y'|y) is grouped with its OWN generative
  term pi(y'|x). Printed eq. 4 and eq. 14 group pi_dag(y'|y) with pi(y|x) (the sign of the
  generative terms is flipped) and carry beta/2 with target p - 1/2, the same equation halved.
  With y' = y_w, y = y_l and the label 1 in place of p, the target 2*1 - 1 = 1 gives eq. 16.
- Eq. 15 is eq. 9 (p(y'>y) - 1/2 = beta[rho_dag(y'|y) - rho_dag(y|y)], from eq. 5 and the
  convention p(y>y) = 1/2) written for (y' = y_w, y = y_l, label 1) and for (y' = y_l,
  y = y_w, label 0), the second one negated.
- Eq. 17's weighting (alpha on the self-improvement loss) is used; sec. 4.2.3 prints the
  weights swapped, but eq. 2, eq. 17 and appendix B ("alpha = 1 ... only L_dag") agree.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

SEQUENCES = ("w|x", "l|x", "w|l", "l|w", "l|l", "w|w")
W_X, L_X, W_L, L_W, L_L, W_W = range(len(SEQUENCES))


def sequence_log_probs(token_log_probs: torch.Tensor, attention_mask: torch.Tensor, prompt_lens, average: bool) -> torch.Tensor:
    """Per-row log-prob of the completion: the sum (or, with `average`, the mean) of the
    per-token log-probs of the tokens after the prompt.

    token_log_probs: (rows, T-1), entry t = log p(token t+1 | tokens <= t), as OpenRLHF's
        Actor returns with return_logprobs=True. attention_mask: (rows, T), right-padded.
    prompt_lens: the prompt's token count for each row.
    """
    rows, width = attention_mask.shape
    positions = torch.arange(width, device=attention_mask.device)
    prompt_lens = torch.as_tensor(prompt_lens, device=attention_mask.device)
    completion = attention_mask.bool() & (positions[None, :] >= prompt_lens[:, None])
    mask = completion[:, 1:].to(token_log_probs.dtype)  # token t+1 is scored at position t
    total = (token_log_probs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


class SRPOLoss(nn.Module):
    """Eq. 17 averaged over the batch; `per_pair` gives the per-pair terms."""

    def __init__(self, beta: float, alpha: float) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.beta, self.alpha = beta, alpha

    def per_pair(self, policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> Dict[str, torch.Tensor]:
        """policy_logps, reference_logps: (pairs, 6) in `SEQUENCES` order. Returns per-pair
        `loss` (eq. 17), `joint` (eq. 16), `self_improve` (eq. 15), and `margin`, the bracket of
        eq. 16 (positive when the pair is ranked the right way)."""
        if policy_logps.shape[-1] != len(SEQUENCES) or policy_logps.shape != reference_logps.shape:
            raise ValueError(f"expected two (pairs, {len(SEQUENCES)}) tensors, got {policy_logps.shape} and {reference_logps.shape}")
        rho = policy_logps.float() - reference_logps.float()
        margin = rho[:, W_L] + rho[:, W_X] - rho[:, L_W] - rho[:, L_X]
        joint = (self.beta * margin - 1) ** 2
        self_improve = (0.5 - self.beta * (rho[:, W_L] - rho[:, L_L])) ** 2 + (
            0.5 - self.beta * (rho[:, W_W] - rho[:, L_W])
        ) ** 2
        loss = (1 - self.alpha) * joint + self.alpha * self_improve
        return {"loss": loss, "joint": joint, "self_improve": self_improve, "margin": margin}

    def forward(self, policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        terms = self.per_pair(policy_logps, reference_logps)
        return terms["loss"].mean(), terms
