"""patches/: the upstream change applies to OpenRLHF 0.11.2 and stock `openrlhf.cli.train_ppo_ray`
then runs SRPPO end to end (through the entry point this package registers)."""

import os
import shutil
import subprocess
import sys

import openrlhf
import pytest

from openrlhf_coherent.devmode.launch import with_cpu_site
from srppo_helpers import check_rewards_match_independent_computation, metric, step_logs, tiny_srppo_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCH = os.path.join(REPO, "patches", "openrlhf-0.11.2-reward-plugins.patch")


def patched_copy(tmp_path):
    """A copy of the installed OpenRLHF with the patch applied, in tmp_path/site."""
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(openrlhf.__file__), site / "openrlhf")
    applied = subprocess.run(["patch", "-p1", "-i", PATCH], cwd=site, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "FAILED" not in applied.stdout and "offset" not in applied.stdout.lower(), applied.stdout
    return site


def test_our_cli_still_works_on_a_patched_install(tiny_models, prompt_file, tmp_path):
    """Both routes on one patched install: `openrlhf_coherent.cli.train_ppo_ray` (used by the recipe,
    cli.srppo and every job script) must not add the --coherent.* flags a second time (argparse
    refused: "conflicting option string") nor call the plugin's hooks twice. Parse, then a short run."""
    base, sft = tiny_models
    site = patched_copy(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    argv = tiny_srppo_argv(sft, base, prompt_file, str(out), "--algo.advantage.estimator", "reinforce")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")  # fmt: skip
    code = (
        "import sys, openrlhf, openrlhf.utils.reward_plugins\n"
        "from openrlhf_coherent.cli.train_ppo_ray import parse_args\n"
        "args = parse_args(sys.argv[1:])\n"
        "print('PARSED', openrlhf.__file__, args.coherent.base_model, args.algo.advantage.estimator)\n"
    )
    parsed = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert parsed.returncode == 0, parsed.stderr[-4000:]
    line = [x for x in parsed.stdout.splitlines() if x.startswith("PARSED ")]
    assert line and line[-1].split()[1:] == [str(site / "openrlhf" / "__init__.py"), base, "reinforce"], parsed.stdout

    proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=420, env=env)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert [s for s, _ in step_logs(log)] == [1, 2], log[-3000:]
    assert log.count("openrlhf_coherent: this job runs on") == 1  # ray_init_kwargs ran once, not twice
    check_rewards_match_independent_computation(str(out), sft, base, 2)


def test_stock_cli_runs_srppo_after_the_patch(tiny_models, prompt_file, tmp_path):
    """Also the suite's end-to-end check of two variants: SRPPO without a reference model
    (reinforce, KL 0: the coherent actor then computes log p_SFT itself), and the token-wise
    reward with the floor guard on (never triggered at 100 nats): OpenRLHF's rollout/reward_mean
    and the rollout log carry each sample's total reward, which equals the independently computed
    sum of log-ratios, not the scalar part (0 for this variant)."""
    base, sft = tiny_models
    site = patched_copy(tmp_path)

    out = tmp_path / "run"
    out.mkdir()
    argv = tiny_srppo_argv(sft, base, prompt_file, str(out), "--algo.advantage.estimator", "reinforce",
                           "--algo.kl.init_coef", "0", "--coherent.reward_type", "token",
                           "--coherent.sft_logp_floor", "100")  # fmt: skip
    # CPU only: the dev mode must be active before the stock CLI imports vLLM (see patches/README.md).
    env = dict(os.environ, PYTHONPATH=with_cpu_site(str(site)), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf.cli.train_ppo_ray", *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=420, env=env,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    steps = step_logs(log)
    assert [s for s, _ in steps] == [1, 2], log[-3000:]
    assert "coherent/reward_mean" in steps[-1][1]
    assert metric(steps[0][1], "coherent/sft_logprobs_reused") == 0.0
    assert metric(steps[0][1], "coherent/sft_forwards") > 0
    assert "this job runs on cpu (CUDA not available here (Ray starts on this machine))" in log
    rows = check_rewards_match_independent_computation(str(out), sft, base, 2)
    for step, status in steps:
        rewards = [r["reward"] for r in rows if r["step"] == step]
        assert metric(status, "rollout/reward_mean") == pytest.approx(sum(rewards) / len(rewards), rel=1e-4, abs=1e-4)
        assert any(abs(r) > 1e-3 for r in rewards)


def test_patch_is_inert_without_a_plugin_name(tmp_path):
    """Stock command lines (a real reward model path) resolve no plugin: behaviour unchanged."""
    site = patched_copy(tmp_path)
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from openrlhf.utils.reward_plugins import find_reward_plugin\n"
        "assert find_reward_plugin(['--reward.model_name_or_path', 'OpenRLHF/Llama-3-8b-rm']) is None\n"
        "p = find_reward_plugin(['--reward.model_name_or_path', 'coherent'])\n"
        "print(type(p).__module__, type(p).__name__)\n" % str(site)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "openrlhf_coherent.plugin CoherentRewardPlugin"
