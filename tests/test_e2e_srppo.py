"""End to end: the real OpenRLHF PPO loop (Ray, DeepSpeed, OpenRLHF's trainer) trains on our reward.

Each test runs `python -m openrlhf_coherent.cli.train_ppo_ray` in a subprocess on CPU with tiny
models, then checks, for every sample OpenRLHF trained on, that the reward it used equals
log p_SFT(y|x) - log p_base(y|x) recomputed independently with plain transformers.

Each real run costs ~40 s of Ray start-up on the 2-core CI machine, so the other configurations
are checked on runs other tests make anyway: a group estimator (reinforce_baseline, 4 samples per
prompt) in tests/test_reward_hacking.py, no reference model (both terms in the coherent actor) in
tests/test_patch.py.
"""

import os

import pytest

from srppo_helpers import check_rewards_match_independent_computation, metric, run_srppo, step_logs, tiny_srppo_argv


def test_srppo_gae_with_critic_reuses_reference_log_probs(tiny_models, prompt_file, tmp_path):
    base, sft = tiny_models
    argv = tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--critic.model_name_or_path", sft)
    log = run_srppo(argv)
    steps = step_logs(log)
    assert [s for s, _ in steps] == [1, 2], log[-3000:]
    for _, status in steps:
        for key in ("coherent/reward_mean", "coherent/reward_std", "coherent/sft_logp_mean",
                    "coherent/base_logp_mean", "coherent/response_length_mean", "coherent/truncated_rate"):  # fmt: skip
            assert key in status
        assert metric(status, "coherent/sft_logprobs_reused") == 1.0
        assert metric(status, "coherent/sft_forwards") == 0.0  # the SFT model is not run twice
        assert metric(status, "coherent/base_forwards") > 0
        assert "critic_loss" in status
    rows = check_rewards_match_independent_computation(str(tmp_path), sft, base, 2)
    # rollout/reward_mean (OpenRLHF's own stat) is the mean of the rewards it trained on
    step1 = [r["reward"] for r in rows if r["step"] == 1]
    assert metric(steps[0][1], "rollout/reward_mean") == pytest.approx(sum(step1) / len(step1), rel=1e-4, abs=1e-4)
    assert os.listdir(tmp_path / "tb"), "TensorBoard logs were not written"
