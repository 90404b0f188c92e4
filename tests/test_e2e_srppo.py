"""End to end: the real OpenRLHF PPO loop (Ray, DeepSpeed, OpenRLHF's trainer) trains on our
reward, is killed, and resumes from its checkpoint.

One run of the recipe's PPO stage (`python -m openrlhf_coherent.cli.srppo`, tiny config: GAE with a
critic from the SFT model, the reference model's log-probs reused as log p_SFT), 4 steps with a
checkpoint every step, is SIGKILLed after its first checkpoint k and run again. Checked:

- the re-run restores OpenRLHF's global step, episode and dataloader state through the coherent
  plugin and runs exactly steps k+1..4, and it restores our own state (rollout count, alarm
  window, floor reference) from the same checkpoint;
- every step logs the coherent-reward diagnostics, and the SFT model is neither loaded nor run a
  second time by the coherent actor;
- for every sample OpenRLHF trained on, in both runs, the reward equals
  log p_SFT(y|x) - log p_base(y|x) recomputed independently with plain transformers;
- OpenRLHF's own rollout/reward_mean is the mean of those rewards; TensorBoard logs exist;
- a third run finds the stage complete and starts nothing.

Each real run costs ~40 s of Ray start-up on the 2-core CI machine, so the other configurations
are checked on runs other tests make anyway: a group estimator (reinforce_baseline, 4 samples per
prompt) in tests/test_reward_hacking.py, no reference model (both terms in the coherent actor) in
tests/test_patch.py.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from srppo_helpers import check_rewards_match_independent_computation, metric, step_logs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml")
COHERENT_KEYS = ("coherent/reward_mean", "coherent/reward_std", "coherent/sft_logp_mean", "coherent/base_logp_mean",
                 "coherent/response_length_mean", "coherent/truncated_rate", "coherent/hacking_alarm")  # fmt: skip


def fresh_ray_env():
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray


def run_until(cmd, paths, timeout=400):
    """Start `cmd`; SIGKILL its whole process group (driver, Ray, DeepSpeed) as soon as all `paths` exist.

    At once, not after a pause: on an idle machine the tiny run saves a step every ~0.25 s, so a pause
    of 0.3-1 s sometimes let it save every step before the kill (nothing left to resume). The kill
    still lands while the next step runs or saves; the partial saves it may leave behind are
    `recipe.resume.align_checkpoints`' job (tests/test_recipe.py)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=fresh_ray_env(), cwd=REPO,
                            start_new_session=True, text=True)  # fmt: skip
    deadline = time.time() + timeout
    while proc.poll() is None and not all(os.path.exists(p) for p in paths) and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:  # it ended by itself: nothing to kill; say how it ended
        raise AssertionError(f"exited with status {proc.returncode} before the kill:\n{proc.communicate()[0][-5000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0]


def test_srppo_gae_run_is_killed_resumes_and_trains_on_the_exact_coherent_reward(tmp_path, tiny_models, prompt_file):
    """8 prompts, 2 per rollout -> 4 PPO steps; fp32, so rewards compare with plain transformers to 1e-3."""
    base, sft = tiny_models
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "openrlhf_coherent.cli.srppo", "--config", TINY,
           "--set", f"root={tmp_path}", "--set", f"base_model={base}", "--set", f"sft_model={sft}",
           "--set", f"output_dir={out}", "--set", f"ppo.prompt_dataset={prompt_file}",
           "--set", "ppo.param_dtype=fp32", "--set", f"ppo.coherent.rollout_log={out / 'rollouts.jsonl'}",
           "--set", "ppo.rollout_batch_size=2", "--set", "ppo.train_batch_size=2",
           "--set", "ppo.rollout_micro_batch_size=1", "--set", "ppo.train_micro_batch_size=1",
           "--set", "ppo.save_steps=1", "--set", "ppo.critic_warmup_buffers=0"]  # fmt: skip
    # Killed once both roles have finished a save (a critic without one would restart from its
    # initial weights, which this test does not check), at a moment that races the next saves.
    first = run_until(cmd, [str(out / "ckpt" / "ppo" / role / "latest") for role in ("_actor", "_critic")])
    assert not (out / "ppo" / "recipe_stage_done.json").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=fresh_ray_env())
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    # The step every role finished saving (recipe.resume.align_checkpoints): the kill lands at any
    # moment, e.g. after the actor's save of a step and before the critic's, or while DeepSpeed
    # rewrites a `latest` file.
    resumed = re.search(r"stage ppo: resumes from checkpoint global_step(\d+)", log)
    assert resumed, first[-3000:] + log[-3000:]
    k = int(resumed.group(1))
    assert 1 <= k < 4, first[-3000:]
    assert "no finished save" not in log
    assert f"resumed the coherent-reward state at rollout {k}" in log
    # With reuse the coherent actor never loads the SFT model (no second copy in memory).
    assert "sft=(reference model log-probs reused)" in log
    steps = step_logs(log)
    assert [s for s, _ in steps] == list(range(k + 1, 5)), log[-3000:]  # continues at k+1, never repeats 1..k
    for _, status in steps:
        for key in COHERENT_KEYS:
            assert key in status, key
        assert metric(status, "coherent/sft_logprobs_reused") == 1.0
        assert metric(status, "coherent/sft_forwards") == 0.0  # the SFT model is not run twice
        assert metric(status, "coherent/base_forwards") > 0
        assert "critic_loss" in status
    assert (out / "ppo" / "model.safetensors").exists() and (out / "ppo" / "recipe_stage_done.json").exists()
    assert os.listdir(out / "tensorboard" / "ppo"), "TensorBoard logs were not written"

    rows = check_rewards_match_independent_computation(str(out), sft, base, 4)
    # Each rollout once (2 samples each): rows the killed run wrote after checkpoint k were cut on
    # resume, and the re-run numbered its rollouts on from the checkpoint.
    assert [r["step"] for r in rows] == [s for s in range(1, 5) for _ in range(2)]
    # rollout/reward_mean (OpenRLHF's own stat) is the mean of the rewards it trained on.
    last = [r["reward"] for r in rows[-2:]]
    assert metric(steps[-1][1], "rollout/reward_mean") == pytest.approx(sum(last) / len(last), rel=1e-4, abs=1e-4)

    # A third run finds every stage complete and starts nothing.
    third = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert third.returncode == 0 and "stage ppo: complete, skipped" in third.stdout
    assert "Global step" not in third.stdout + third.stderr
