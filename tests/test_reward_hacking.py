"""Reward hacking of the summed coherent reward, reproduced through the real PPO path, and the
recommended guard and the alarm on the same run (demo world, seed 0; see demo/hacking.py)."""

import pytest

from demo.hacking import HACKING_LR, prepare_models
from demo.ppo import PPOConfig, coherent_reward_flags, run_ppo
from demo.run import RECOMMENDED_GUARD
from srppo_helpers import check_rewards_match_independent_computation

STEPS = 12  # `python -m demo.hacking`'s budget: the hack shows from about step 5


@pytest.fixture(scope="module")
def hack_world(tmp_path_factory):
    return prepare_models(str(tmp_path_factory.mktemp("hacking")))


def run(hack_world, tmp_path, guard):
    _, base, sft, prompts = hack_world
    out = str(tmp_path)
    cfg = PPOConfig(actor_lr=HACKING_LR, max_samples=16 * STEPS)
    steps = run_ppo(sft, prompts, out, coherent_reward_flags(base, out, guard), cfg).steps
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    first, last = steps[0], steps[-1]
    return first, last, steps


def test_unguarded_coherent_reward_is_hacked_and_the_alarm_fires(hack_world, tmp_path):
    first, last, steps = run(hack_world, tmp_path, [])
    # The reward the policy climbed is exactly log p_SFT - log p_base (no bug to blame): every
    # sample of the first and the last rollout, recomputed with plain transformers. Also the suite's
    # end-to-end check of a group estimator (reinforce_baseline, 4 samples per prompt) with the
    # reference log-probs reused.
    _, base, sft, _ = hack_world
    check_rewards_match_independent_computation(str(tmp_path), sft, base, STEPS, only_steps={1, STEPS})
    assert last["coherent/reward_mean"] > first["coherent/reward_mean"] + 5
    # How far the length climbs varies run to run (the rollout batches' floating-point sums depend
    # on which requests share a batch; docs/demo.md, "Repeatability"): after 8 steps +4.3 to +11.7 tokens
    # and an EOS rate of 0.72 to 0.89 were seen, hence 12 steps; the check asks +3, still beyond
    # the guarded run's ceiling below.
    assert last["coherent/response_length_mean"] > first["coherent/response_length_mean"] + 3
    assert first["coherent/eos_rate"] > 0.9 and last["coherent/eos_rate"] < first["coherent/eos_rate"] - 0.25
    assert last["coherent/sft_logp_per_token"] < first["coherent/sft_logp_per_token"] - 0.3
    assert max(s["coherent/hacking_alarm"] for s in steps) == 1.0


def test_recommended_guard_keeps_sft_behaviour_and_the_alarm_silent(hack_world, tmp_path):
    first, last, steps = run(hack_world, tmp_path, RECOMMENDED_GUARD)
    assert min(s["coherent/eos_rate"] for s in steps) > 0.9
    assert last["coherent/response_length_mean"] < first["coherent/response_length_mean"] + 3
    assert all(s["coherent/hacking_alarm"] == 0.0 for s in steps)
