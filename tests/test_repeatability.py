"""The same command on the same machine repeats bit for bit, PPO included.

Two identical tiny SRPPO runs (a group estimator, 2 samples per prompt at temperature 1, so the
rollout engine batches many requests per dispatch) must write identical rollout logs (every
sample's tokens, rewards and diagnostics) and print identical per-step metrics. Before the CPU
engine batched by dispatch (openrlhf_coherent/devmode/cpu_rollout.py), which requests shared a batch
depended on when they arrived, which moved logits in their last bits and PPO rows between runs.
"""

import ast
import json
import os

from srppo_helpers import PROMPTS, run_srppo, step_logs, tiny_srppo_argv


def timing_free(status: str) -> dict:
    """A step's status dict without the wall-clock entries (they differ by nature)."""
    return {k: v for k, v in ast.literal_eval(status).items() if not k.startswith("timing/") and "time" not in k and "throughput" not in k}


def test_two_identical_runs_write_identical_rollouts_and_metrics(tmp_path, tiny_models, prompt_file):
    base, sft = tiny_models
    runs = []
    for name in ("first", "second"):
        out = str(tmp_path / name)
        argv = tiny_srppo_argv(sft, base, prompt_file, out, "--algo.advantage.estimator", "reinforce_baseline",
                               "--rollout.n_samples_per_prompt", "2", "--rollout.temperature", "1.0")  # fmt: skip
        log = run_srppo(argv)
        with open(os.path.join(out, "train.log"), "w") as f:  # for a reader of a failure
            f.write(log)
        with open(os.path.join(out, "rollouts.jsonl")) as f:
            rollouts = [{k: v for k, v in json.loads(line).items() if k != "run_id"} for line in f]
        runs.append((rollouts, [(step, timing_free(status)) for step, status in step_logs(log)]))
    (rollouts_a, steps_a), (rollouts_b, steps_b) = runs
    assert len(steps_a) == len(PROMPTS) // 4 and len(rollouts_a) > 0
    assert rollouts_a == rollouts_b
    for (step, a), (_, b) in zip(steps_a, steps_b):
        assert a == b, {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert [s for s, _ in steps_a] == [s for s, _ in steps_b]


def test_plain_ppo_through_our_cli_gets_the_seeded_trainer():
    """Without the coherent reward (the demo's oracle) our CLI still seeds the prompt order: the
    trainer class OpenRLHF's CLI instantiates is the seeded one, as under the coherent reward."""
    import openrlhf.trainer.ppo_trainer as ppo_trainer

    from openrlhf_coherent.cli.train_ppo_ray import plugin_installed
    from openrlhf_coherent.plugin import CoherentRewardPlugin
    from openrlhf_coherent.trainer import CoherentPPOTrainer, SeededPPOTrainer, _SeededPPOTrainer

    stock = ppo_trainer.PPOTrainer
    with plugin_installed(CoherentRewardPlugin(), coherent=False):
        assert ppo_trainer.PPOTrainer is SeededPPOTrainer
    assert ppo_trainer.PPOTrainer is stock
    assert issubclass(CoherentPPOTrainer.__ray_actor_class__, _SeededPPOTrainer)
