"""Preference losses OpenRLHF does not ship, with the call signature of its `DPOLoss`.

OpenRLHF's `DPOTrainer` calls `loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected)`
and expects `(loss, chosen_rewards, rejected_rewards)`; both classes here keep that contract, so
`cli/train_dpo.py` only swaps the trainer's `loss_fn` (DPO and IPO stay OpenRLHF's own `DPOLoss`).

SLiC-HF as SeRA writes it (eq. 8), a hinge on the implicit reward margin:
    loss = max(0, 1 - beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])
so 1/beta is the margin (Zhao et al.'s delta). SeRA uses this reference-anchored form and no
extra regulariser (SLiC-HF's original cross-entropy term on SFT targets is not part of it).

SimPO (Meng et al. 2024; SeRA appendix D.3, eq. 17-18), reference-free, on length-averaged
log-probs:
    loss = -log sigmoid(beta * mean_logp(y_w) - beta * mean_logp(y_l) - gamma)
SeRA's eq. 18 prints it without the minus sign and without the margin gamma; minimising
+log sigmoid would push the chosen response down, so the sign is SimPO's. gamma = 0 is SeRA's
form, gamma > 0 SimPO's target margin. The caller must pass *length-averaged* log-probs.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("dpo", "ipo", "slic", "simpo")


class SLiCHingeLoss(nn.Module):
    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen_ratio = policy_chosen_logps - reference_chosen_logps
        rejected_ratio = policy_rejected_logps - reference_rejected_logps
        losses = torch.relu(1 - self.beta * (chosen_ratio - rejected_ratio))
        return losses.mean(), self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()


class SimPOLoss(nn.Module):
    def __init__(self, beta: float, gamma: float = 0.0) -> None:
        super().__init__()
        self.beta, self.gamma = beta, gamma

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor = None,
        reference_rejected_logps: torch.Tensor = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs are per-token means; the reference arguments are accepted and ignored."""
        chosen_rewards = self.beta * policy_chosen_logps
        rejected_rewards = self.beta * policy_rejected_logps
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards - self.gamma)
        return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def make_loss(name: str, beta: float, *, label_smoothing: float = 0.0, simpo_gamma: float = 0.0) -> nn.Module:
    """The loss module for `--dpo.loss name`: OpenRLHF's DPOLoss for dpo/ipo, ours otherwise."""
    if name in ("dpo", "ipo"):
        from openrlhf.models import DPOLoss

        return DPOLoss(beta, label_smoothing, ipo=name == "ipo")
    if name == "slic":
        return SLiCHingeLoss(beta)
    if name == "simpo":
        return SimPOLoss(beta, simpo_gamma)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
