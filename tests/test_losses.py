"""SLiC-HF hinge and SimPO losses against hand-computed numbers, and the trainer plumbing SimPO needs.

No models: the losses are pure torch, and the SimPO trainer hooks are checked on hand-made tensors.
"""

import pytest
import torch

from openrlhf_coherent.losses import SimPOLoss, SLiCHingeLoss, make_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def test_slic_hinge_matches_hand_computed_values_and_gradient():
    # beta 0.5, margin of miss-classification 1/beta = 2 nats of implicit reward margin.
    #   row 1: chosen ratio -1-(-1.5)=0.5, rejected ratio -3-(-2)=-1 -> m=1.5 -> 1-0.75 = 0.25
    #   row 2: chosen ratio 0,            rejected ratio -1-(-2)=1   -> m=-1  -> 1+0.5  = 1.5
    #   row 3: chosen ratio -1-(-4)=3,    rejected ratio 0           -> m=3   -> 1-1.5 < 0 -> 0
    pc, pr = t(-1.0, -2.0, -1.0), t(-3.0, -1.0, -2.0)
    rc, rr = t(-1.5, -2.0, -4.0), t(-2.0, -2.0, -2.0)
    loss, chosen_rewards, rejected_rewards = SLiCHingeLoss(beta=0.5)(pc, pr, rc, rr)
    assert loss.item() == pytest.approx((0.25 + 1.5 + 0.0) / 3, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.25, 0.0, 1.5])  # beta * (log pi - log ref)
    assert rejected_rewards.tolist() == pytest.approx([-0.5, 0.5, 0.0])
    loss.backward()
    # d loss / d log pi(y_w) = -beta / rows where the hinge is active, 0 where the margin is met.
    assert pc.grad.tolist() == pytest.approx([-0.5 / 3, -0.5 / 3, 0.0])
    assert pr.grad.tolist() == pytest.approx([0.5 / 3, 0.5 / 3, 0.0])
    assert rc.grad.tolist() == pytest.approx([0.5 / 3, 0.5 / 3, 0.0])  # the reference anchors the margin


def test_simpo_matches_hand_computed_values_and_ignores_the_reference():
    # beta 2, gamma 0.5, length-averaged log-probs:
    #   row 1: 2*(-0.5) - 2*(-1.0) - 0.5 =  0.5 -> -log sigmoid(0.5)  = log(1 + e^-0.5) = 0.474077
    #   row 2: 2*(-1.0) - 2*(-0.8) - 0.5 = -0.9 -> -log sigmoid(-0.9) = log(1 + e^0.9)  = 1.241154
    mean_c, mean_r = t(-0.5, -1.0), t(-1.0, -0.8)
    loss, chosen_rewards, rejected_rewards = SimPOLoss(beta=2.0, gamma=0.5)(mean_c, mean_r, t(9.0, 9.0), t(-9.0, -9.0))
    assert loss.item() == pytest.approx((0.474077 + 1.241154) / 2, abs=1e-5)
    assert chosen_rewards.tolist() == pytest.approx([-1.0, -2.0])
    assert rejected_rewards.tolist() == pytest.approx([-2.0, -1.6])
    # gamma 0 is SeRA's eq. 18 (with SimPO's sign): row 1: -log sigmoid(1.0) = 0.313262
    loss0, _, _ = SimPOLoss(beta=2.0)(mean_c[:1], mean_r[:1])
    assert loss0.item() == pytest.approx(0.313262, abs=1e-5)


def test_make_loss_gives_openrlhf_dpo_and_ipo_and_refuses_unknown():
    from openrlhf.models import DPOLoss

    dpo, ipo = make_loss("dpo", 0.1), make_loss("ipo", 0.1)
    assert isinstance(dpo, DPOLoss) and not dpo.ipo and isinstance(ipo, DPOLoss) and ipo.ipo
    assert isinstance(make_loss("slic", 0.2), SLiCHingeLoss) and make_loss("simpo", 2.0, simpo_gamma=1.0).gamma == 1.0
    with pytest.raises(ValueError, match="loss must be one of"):
        make_loss("kto", 0.1)


def test_simpo_trainer_feeds_length_averaged_log_probs_and_skips_the_reference():
    from openrlhf_coherent.cli.train_dpo import trainer_class

    # OpenRLHF's _get_batch_logps masks the prompt (first 2 tokens) and shifts by one: the response
    # log-probs of row 0 are positions 1..3 of the shifted tensor, of row 1 positions 1..2.
    logps = torch.tensor([[-9.0, -1.0, -2.0, -3.0], [-9.0, -4.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    prompt_lens = [2, 2]
    simpo = object.__new__(trainer_class("simpo", 0.0))  # only the pure methods are used
    dpo = object.__new__(trainer_class("slic", None))
    logp, mean = simpo._get_batch_logps(logps, mask, prompt_lens)
    assert logp.tolist() == pytest.approx([-2.0, -3.0]) and mean.tolist() == pytest.approx([-2.0, -3.0])
    logp, mean = dpo._get_batch_logps(logps, mask, prompt_lens)
    assert logp.tolist() == pytest.approx([-6.0, -6.0]) and mean.tolist() == pytest.approx([-2.0, -3.0])

    simpo.ref_model = object()
    ids = torch.zeros(3, 5, dtype=torch.long)
    chosen, rejected, aux, nll = simpo.concatenated_forward(simpo.ref_model, ids, None, ids, None, None)
    assert chosen.tolist() == rejected.tolist() == [0.0, 0.0, 0.0]  # no reference forward for SimPO


def test_train_dpo_flag_checks():
    from openrlhf_coherent.cli.train_dpo import split_args
    from openrlhf_coherent.config import ConfigError

    ours, rest = split_args(["--dpo.loss", "simpo", "--dpo.simpo_gamma", "0.5", "--model.beta", "2"])
    assert (ours.loss, ours.simpo_gamma, rest) == ("simpo", 0.5, ["--model.beta", "2"])
    with pytest.raises(ConfigError, match="--dpo.simpo_gamma"):
        split_args(["--dpo.loss", "slic", "--dpo.simpo_gamma", "0.5"])
    with pytest.raises(ConfigError, match="--model.ipo_enable"):
        split_args(["--dpo.loss", "dpo", "--model.ipo_enable"])
