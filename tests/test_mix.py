"""The coherent reward mixed with a rule reward (`--reward.remote_url`) in one real PPO run.

Unit level: the mix and its normalisations, and OpenRLHF's executor driven by `mix.RuleReward`
(missing, NaN and raising rewards stop with the file and the sample named). End to end
(real Ray, DeepSpeed, OpenRLHF's trainer; our CLI and the patched stock one): through the
patched stock CLI with GAE, every sample's trained reward is exactly 2 x coherent + 0.5 x rule
(fp32), the rule term is what the reward_func file returns for OpenRLHF's query text, and the
per-term logs reach the step status; with a group estimator each term is z-scored within its
prompt's samples; a raising reward_func stops the run naming the file and the sample.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from srppo_helpers import metric, patched_openrlhf_site, step_logs, tiny_srppo_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RULE = '''
import torch

def reward_func(queries, prompts, labels):
    words = [float(len(q.split())) for q in queries]
    rewards = torch.tensor([w % 4 for w in words])
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"rule_words": torch.tensor(words)}}
'''


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_mix_weights_and_normalisations():
    from openrlhf_coherent.mix import mix, zscore

    c = torch.tensor([1.0, 3.0, -2.0, 0.0])
    r = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert torch.equal(mix(c, r, 2.0, 0.5, "none", 2), 2.0 * c + 0.5 * r)
    z = zscore(c, None)
    assert z.mean().abs() < 1e-6 and (z.std(unbiased=False) - 1).abs() < 1e-6
    # Per group of 2 consecutive samples (one prompt's); a constant group ranks nothing: 0.
    assert torch.equal(zscore(r, 2), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(mix(c, r, 1.0, 3.0, "group", 2), torch.tensor([-1.0 - 3.0, 1.0 + 3.0, -1.0, 1.0]))
    # Equal values whose fp32 mean is off by an ulp are still constant.
    assert torch.equal(zscore(torch.full((16,), 0.1), None), torch.zeros(16))
    assert torch.equal(zscore(torch.full((8,), 0.9), 8), torch.zeros(8))


def test_rule_reward_failures_name_the_file_and_the_sample(tmp_path):
    from openrlhf_coherent.mix import RuleReward, RuleRewardError

    ok = RuleReward(write(tmp_path, "rule.py", RULE))
    out = ok(["a b c", "a b c d e"], ["p1", "p2"], ["", ""], step=3)
    assert [o["reward"] for o in out] == [3.0, 1.0] and out[1]["extra_logs"] == {"rule_words": 5.0}
    cases = {
        "raises.py": ("def reward_func(q, p, l):\n    raise ValueError('checker crashed')\n", "reward_func raised ValueError: checker crashed"),
        "nan.py": ("def reward_func(q, p, l):\n    return {'rewards': [float('nan')] * len(q)}\n", "returned the reward [nan]"),
        "missing.py": ("def reward_func(q, p, l):\n    return {'scores': [1.0] * len(q)}\n", "returned no 'rewards'"),
    }
    for name, (text, message) in cases.items():
        path = write(tmp_path, name, text)
        with pytest.raises(RuleRewardError) as e:
            RuleReward(path)(["q0", "q1"], ["first prompt", "second prompt"], ["", ""], step=3)
        assert f"--reward.remote_url {path}: rollout 3, sample 0 (prompt 'first prompt')" in str(e.value), e.value
        assert message in str(e.value)


def test_rule_reward_over_http():
    """An HTTP reward endpoint (OpenRLHF's other --reward.remote_url form), through its own client."""
    import asyncio
    import socket
    import threading

    from aiohttp import web

    from openrlhf_coherent.mix import RuleReward, RuleRewardError

    async def reward(request):
        data = await request.json()
        if data["query"][0] == "bad":
            return web.json_response({"rewards": [float("inf")]}, dumps=lambda x: '{"rewards": [1e999]}')
        return web.json_response({"rewards": [float(len(q)) for q in data["query"]], "extra_logs": {"n": [1.0]}})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/reward", reward)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/reward"
        out = RuleReward(url)(["abc", "abcdef"], ["p", "q"], ["", ""], step=1)
        assert [o["reward"] for o in out] == [3.0, 6.0] and out[0]["extra_logs"] == {"n": 1.0}
        with pytest.raises(RuleRewardError, match=f"--reward.remote_url {url}: rollout 1, sample 1 .*expected one finite number"):
            RuleReward(url)(["abc", "bad"], ["p", "q"], ["", ""], step=1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def run(argv, timeout=420, module="openrlhf_coherent.cli.train_ppo_ray", **env_vars):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0", **env_vars)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", module, *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def check_exact_mix(out_dir, sft, weight, rule_weight):
    """Every rollout-log row: the rule term is RULE on OpenRLHF's query text (prompt + response,
    special tokens kept), and the trained reward is exactly weight x coherent + rule_weight x rule."""
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in open(os.path.join(out_dir, "rollouts.jsonl"))]
    tok = AutoTokenizer.from_pretrained(sft)
    for row in rows:
        query = tok.decode(row["prompt_ids"] + row["response_ids"], skip_special_tokens=False)
        assert row["rule_reward"] == float(len(query.split()) % 4), row
        total = torch.tensor(row["coherent_reward"]) * weight + torch.tensor(row["rule_reward"]) * rule_weight
        assert row["reward"] == total.item(), row  # exactly: the same fp32 arithmetic
    assert len({r["rule_reward"] for r in rows}) > 1, "the rule reward never varied: the check above is weak"
    return rows


def test_gae_through_the_patched_stock_cli_trains_on_the_exact_weighted_mix(tmp_path, tiny_models, prompt_file):
    """Stock `openrlhf.cli.train_ppo_ray` with patches/ applied (the plugin's validation takes the URL
    before OpenRLHF decides whether to build a reward group), GAE with a critic."""
    from openrlhf_coherent.devmode.launch import with_cpu_site

    base, sft = tiny_models
    site = patched_openrlhf_site(tmp_path)
    rule = write(tmp_path, "rule.py", RULE)
    argv = tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--reward.remote_url", rule,
                           "--coherent.weight", "2", "--coherent.rule_weight", "0.5",
                           "--algo.advantage.estimator", "gae", "--critic.model_name_or_path", sft)  # fmt: skip
    # This checkout's package next to the patched OpenRLHF (the plugin is found by its entry point).
    status, log = run(argv, module="openrlhf.cli.train_ppo_ray", PYTHONPATH=with_cpu_site(os.pathsep.join([str(site), REPO])))
    assert status == 0, log[-6000:]
    rows = check_exact_mix(tmp_path, sft, 2.0, 0.5)
    assert len(rows) == 8
    steps = step_logs(log)
    assert len(steps) == 2
    for step, status_dict in steps:
        step_rows = [r for r in rows if r["step"] == step]
        for key in ("coherent/reward_mean", "rule/reward_mean", "rule/reward_std", "reward/total_mean", "rule_words"):
            assert f"'{key}'" in status_dict, key
        assert metric(status_dict, "rule/reward_mean") == pytest.approx(sum(r["rule_reward"] for r in step_rows) / 4, abs=1e-4)
        assert metric(status_dict, "reward/total_mean") == pytest.approx(sum(r["reward"] for r in step_rows) / 4, abs=1e-4)
        assert "critic_loss" in status_dict


def test_a_raising_reward_func_stops_the_run_naming_file_and_sample(tmp_path, tiny_models, prompt_file):
    base, sft = tiny_models
    rule = write(tmp_path, "broken.py", "def reward_func(q, p, l):\n    raise KeyError('label')\n")
    argv = tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--reward.remote_url", rule,
                           "--algo.advantage.estimator", "reinforce")  # fmt: skip
    status, log = run(argv)
    assert status != 0
    assert f"--reward.remote_url {rule}: rollout 1, sample 0" in log and "reward_func raised KeyError" in log, log[-4000:]
    assert not step_logs(log), "a step trained although the reward failed"
    assert not os.path.exists(tmp_path / "rollouts.jsonl")


def test_group_estimator_with_per_prompt_normalisation(tmp_path, tiny_models, prompt_file):
    """reinforce_baseline, 2 samples per prompt, each term z-scored within its prompt's samples:
    the groups are found in prompt order (Experience.index), whatever order the micro-batches hold."""
    base, sft = tiny_models
    rule = write(tmp_path, "rule.py", RULE)
    argv = tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--reward.remote_url", rule,
                           "--coherent.mix_normalize", "group", "--coherent.rule_weight", "3",
                           "--algo.advantage.estimator", "reinforce_baseline", "--rollout.n_samples_per_prompt", "2",
                           "--data.max_samples", "4", "--rollout.batch_size", "2")  # fmt: skip
    status, log = run(argv)
    assert status == 0, log[-6000:]
    rows = [json.loads(line) for line in open(tmp_path / "rollouts.jsonl")]
    groups = {}
    for row in rows:
        groups.setdefault((row["step"], tuple(row["prompt_ids"])), []).append(row)
    assert sorted(map(len, groups.values())) == [2] * 4, "each prompt's 2 samples in one step"

    def z(values):
        v = torch.tensor(values)
        std = v.std(unbiased=False)
        return (v - v.mean()) / std if std > 0 else torch.zeros_like(v)

    for group in groups.values():
        expected = z([r["coherent_reward"] for r in group]) + 3.0 * z([r["rule_reward"] for r in group])
        assert [r["reward"] for r in group] == pytest.approx(expected.tolist(), abs=1e-5), group
    steps = step_logs(log)
    assert [s for s, _ in steps] == [1, 2]
    assert all("'rule/reward_mean'" in status_dict and "'reward/total_mean'" in status_dict for _, status_dict in steps)

