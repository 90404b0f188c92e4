"""Issue 27, the second review of the GPU-cluster path: what a CPU can check of it.

Before-Ray checks run in this process, through our CLI's own parser (`parse_args`: OpenRLHF's
parser, `hierarchize` and the plugin's validation; nothing starts).
"""

import json
import os

import pytest

from openrlhf_coherent.cli.train_ppo_ray import main, parse_args
from openrlhf_coherent.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def srppo_argv(sft, base, *extra):
    return ["--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft,
            "--reward.model_name_or_path", "coherent", "--coherent.base_model", base,
            "--data.prompt_dataset", "unused.jsonl", *extra]  # fmt: skip


# ---- item 2: the GPU smoke test's command lines pass our validation ------------------------------


def test_every_gpu_tests_ppo_argv_passes_our_parser(tmp_path, prompt_file):
    """Each GPU test's PPO command line (test_gpu_smoke.PPO_ARGV_BUILDERS) through our CLI's parser
    and validation on CPU, on the models that test builds: its head size is one every vLLM
    attention backend accepts (a multiple of 32, at least 64)."""
    from test_gpu_smoke import PPO_ARGV_BUILDERS, vllm_tiny_models

    base, sft = vllm_tiny_models(str(tmp_path / "models"))
    config = json.load(open(os.path.join(base, "config.json")))
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert head_dim >= 64 and head_dim % 32 == 0, head_dim
    assert PPO_ARGV_BUILDERS
    for build in PPO_ARGV_BUILDERS:
        args = parse_args(build(sft, base, prompt_file, str(tmp_path / build.__name__)))
        assert args.reward.model_name_or_path == "coherent"
        assert args.ds.param_dtype == "bf16"  # a GPU run: the fp32 dev-mode dtype would be refused on CUDA


# ---- item 4: a stop-properly coefficient in [0, 1) would reward truncation -----------------------


@pytest.mark.parametrize("coef", ["0", "0.5"])
def test_stop_properly_scaling_coefficient_is_refused(tiny_models, coef):
    base, sft = tiny_models
    with pytest.raises(ConfigError, match=r"--reward.stop_properly_penalty_coef .*Pass a negative value"):
        parse_args(srppo_argv(sft, base, "--reward.stop_properly_penalty_coef", coef))


def test_stop_properly_replacement_value_is_accepted(tiny_models):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base, "--reward.stop_properly_penalty_coef", "-10"))
    assert args.reward.stop_properly_penalty_coef == -10


def test_alarm_advice_names_a_negative_stop_properly_value():
    from openrlhf_coherent.alarm import GUARD_ADVICE

    assert "--reward.stop_properly_penalty_coef <a negative reward" in GUARD_ADVICE
