"""SRPO loss (openrlhf_coherent/srpo/loss.py): hand-computed values, and the paper's synthetic
bandit (sec. 5) where DPO and IPO (OpenRLHF's own DPOLoss, what train_dpo trains with) follow the
behaviour policy and SRPO does not."""

import math

import pytest
import torch
import torch.nn.functional as F

from openrlhf.models.loss import DPOLoss
from openrlhf_coherent.srpo.loss import SEQUENCES, SRPOLoss, sequence_log_probs

# Column order of the (pairs, 6) tensors.
assert SEQUENCES == ("w|x", "l|x", "w|l", "l|w", "l|l", "w|w")


def hand_loss(policy, reference, beta, alpha):
    """Eq. 15, 16, 17 for one pair written out term by term from the paper's formulas."""
    rho = {name: policy[i] - reference[i] for i, name in enumerate(SEQUENCES)}
    joint = (beta * (rho["w|l"] + rho["w|x"] - (rho["l|w"] + rho["l|x"])) - 1) ** 2
    self_improve = (0.5 - beta * (rho["w|l"] - rho["l|l"])) ** 2 + (0.5 - beta * (rho["w|w"] - rho["l|w"])) ** 2
    return (1 - alpha) * joint + alpha * self_improve


def test_loss_matches_hand_computation():
    policy = [[-3.0, -5.0, -2.0, -6.0, -4.5, -1.0], [-10.0, -7.0, -9.5, -6.5, -8.0, -9.0]]
    reference = [[-4.0, -4.0, -3.0, -5.0, -4.0, -2.0], [-8.0, -8.0, -8.0, -8.0, -8.0, -8.0]]
    beta, alpha = 0.5, 0.3
    loss, terms = SRPOLoss(beta=beta, alpha=alpha)(torch.tensor(policy), torch.tensor(reference))
    # Pair 0 by hand: rho = (1, -1, 1, -1, -0.5, 1); eq. 16 bracket 1 + 1 + 1 + 1 = 4,
    # joint (0.5*4 - 1)^2 = 1; eq. 15: (0.5 - 0.5*1.5)^2 + (0.5 - 0.5*2)^2 = 0.0625 + 0.25.
    assert terms["joint"][0].item() == pytest.approx(1.0)
    assert terms["self_improve"][0].item() == pytest.approx(0.3125)
    assert terms["margin"][0].item() == pytest.approx(4.0)
    expected = [hand_loss(p, r, beta, alpha) for p, r in zip(policy, reference)]
    assert expected[0] == pytest.approx(0.7 * 1.0 + 0.3 * 0.3125)
    assert terms["loss"].tolist() == pytest.approx(expected)
    assert loss.item() == pytest.approx(sum(expected) / 2)
    # alpha = 0: eq. 16 only; alpha = 1: eq. 15 only (eq. 17 / appendix B).
    assert SRPOLoss(beta, 0.0)(torch.tensor(policy), torch.tensor(reference))[0].item() == pytest.approx(
        sum(hand_loss(p, r, beta, 0.0) for p, r in zip(policy, reference)) / 2)
    assert SRPOLoss(beta, 1.0)(torch.tensor(policy), torch.tensor(reference))[0].item() == pytest.approx(
        sum(hand_loss(p, r, beta, 1.0) for p, r in zip(policy, reference)) / 2)
    # At the reference (rho = 0) every pair's loss is (1 - alpha) + alpha / 2.
    assert SRPOLoss(beta, alpha)(torch.tensor(reference), torch.tensor(reference))[0].item() == pytest.approx(0.85)


@pytest.mark.parametrize("average", [False, True])
def test_loss_from_token_log_probs_sum_and_average(average):
    """Two rows (one pair would need 6; the aggregation is per row): right-padded, prompts of 2 and
    3 tokens. Row 0: tokens t0..t4, row 1: t0..t3 + pad."""
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    # Entry t scores token t+1.
    token_logps = torch.tensor([[-0.1, -0.2, -0.3, -0.4], [-1.0, -2.0, -3.0, -99.0]])
    got = sequence_log_probs(token_logps, attention_mask, torch.tensor([2, 3]), average)
    # Row 0 completion = tokens 2, 3, 4 (scored at 1, 2, 3); row 1 = token 3 (scored at 2), the pad is out.
    expected = [(-0.2 - 0.3 - 0.4) / (3 if average else 1), -3.0]
    assert got.tolist() == pytest.approx(expected)

    # Through the loss: 6 rows = one pair, policy vs a reference that differs on the w|l row only.
    mask = torch.ones(6, 4, dtype=torch.long)
    mask[2, 3] = 0  # w|l is one token shorter
    prompt_lens = torch.tensor([1, 1, 2, 2, 2, 2])
    ref_tokens = torch.full((6, 3), -1.0)
    pol_tokens = ref_tokens.clone()
    pol_tokens[2, 1] = -0.5  # w|l's one completion token (token 2, scored at entry 1)
    pol_tokens[0, :] = -0.9  # w|x: three completion tokens at -0.9 instead of -1
    pol = sequence_log_probs(pol_tokens, mask, prompt_lens, average).view(1, 6)
    ref = sequence_log_probs(ref_tokens, mask, prompt_lens, average).view(1, 6)
    beta = 2.0
    # rho(w|l) = 0.5 (one token); rho(w|x) = 3 * 0.1 summed, 0.1 averaged.
    rho_wl, rho_wx = 0.5, (0.1 if average else 0.3)
    expected_joint = (beta * (rho_wl + rho_wx) - 1) ** 2
    expected_self = (0.5 - beta * rho_wl) ** 2 + 0.5**2
    loss, terms = SRPOLoss(beta=beta, alpha=0.25)(pol, ref)
    assert terms["joint"].item() == pytest.approx(expected_joint, rel=1e-5)
    assert terms["self_improve"].item() == pytest.approx(expected_self, rel=1e-5)
    assert loss.item() == pytest.approx(0.75 * expected_joint + 0.25 * expected_self, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# The synthetic bandit of paper sec. 5
# ----------------------------------------------------------------------------------------------

P = torch.tensor([[0.5, 0.99, 0.3], [0.01, 0.5, 0.25], [0.7, 0.75, 0.5]])  # P[i][j] = p(y_i > y_j)
LOG_REF = math.log(1 / 3)  # uniform reference, for pi(y) and for every row of pi(y'|y)


def preference_pairs(mu, n=10_000, seed=0):
    """(winner, loser) indices of n pairs drawn independently from mu and rated by sampling P."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor(mu)
    a = torch.multinomial(mu, n, replacement=True, generator=g)
    b = torch.multinomial(mu, n, replacement=True, generator=g)
    a_wins = torch.rand(n, generator=g) < P[a, b]
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def minimise(loss_fn, params, max_steps=3000, lr=0.1):
    """Full-batch Adam until the gradient vanishes; returns the final gradient norm."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(max_steps):
        opt.zero_grad()
        loss_fn().backward()
        grad = torch.cat([p.grad.flatten() for p in params]).norm().item()
        if grad < 1e-5:
            break
        opt.step()
    return grad


def train_dpo_family(w, l, ipo):
    """A tabular pi(y) = softmax(logits) trained with OpenRLHF's DPOLoss (beta 1)."""
    logits = torch.zeros(3, requires_grad=True)
    loss_fn = DPOLoss(beta=1.0, ipo=ipo)
    ref = torch.full((len(w),), LOG_REF)

    def loss():
        logp = F.log_softmax(logits, -1)
        return loss_fn(logp[w], logp[l], ref, ref)[0]

    grad = minimise(loss, [logits])
    return torch.softmax(logits, -1).detach(), grad


def train_srpo(w, l):
    """Tabular SRPO as in sec. 5: pi(y) = softmax(gen) and pi(y'|y) = softmax(rev[y]) (a 3x3 table
    of logits, row = the in-context completion y), beta 1, alpha 0, uniform references. The loss
    is evaluated on the 9 distinct (w, l) combinations weighted by their counts: the same value
    as the mean over the 10,000 pairs, cheaper."""
    gen = torch.zeros(3, requires_grad=True)
    rev = torch.zeros(3, 3, requires_grad=True)
    combos, counts = torch.stack([w, l], 1).unique(dim=0, return_counts=True)
    cw, cl = combos[:, 0], combos[:, 1]
    weights = counts.float() / counts.sum()
    loss_fn = SRPOLoss(beta=1.0, alpha=0.0)
    reference = torch.full((len(cw), 6), LOG_REF)

    def loss():
        g, r = F.log_softmax(gen, -1), F.log_softmax(rev, -1)  # r[y, y'] = log pi(y'|y)
        policy = torch.stack([g[cw], g[cl], r[cl, cw], r[cw, cl], r[cl, cl], r[cw, cw]], 1)  # SEQUENCES order
        return (loss_fn.per_pair(policy, reference)["loss"] * weights).sum()

    grad = minimise(loss, [gen, rev])
    return torch.softmax(gen, -1).detach(), grad


@pytest.mark.parametrize(
    "mu, dpo_ipo_pick",
    [([1 / 3, 1 / 3, 1 / 3], 2), ([0.15, 0.7, 0.15], 0)],
    ids=["uniform", "skewed_to_y1"],
)
def test_synthetic_bandit_srpo_is_robust_to_the_behaviour_policy(mu, dpo_ipo_pick, one_thread):
    torch.manual_seed(0)
    w, l = preference_pairs(mu)
    for ipo in (False, True):
        pi, grad = train_dpo_family(w, l, ipo)
        assert grad < 1e-3, f"{'IPO' if ipo else 'DPO'} did not converge"
        assert pi.argmax().item() == dpo_ipo_pick, (ipo, pi)
    pi, grad = train_srpo(w, l)
    assert grad < 1e-3, "SRPO did not converge"
    assert pi.argmax().item() == 2, pi  # y2 under both behaviour policies (paper fig. 2)
