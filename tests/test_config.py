"""Validation of the SRPPO command line: every bad input fails before Ray starts, naming the flag."""

import json
import os
import shutil

import pytest
import ray

from openrlhf_coherent.cli.train_ppo_ray import main, parse_args


def srppo_argv(sft, base, *extra):
    return [
        "--actor.model_name_or_path", sft,
        "--critic.model_name_or_path", sft,
        "--reward.model_name_or_path", "coherent",
        "--coherent.base_model", base,
        "--data.prompt_dataset", "unused.jsonl",
        *extra,
    ]  # fmt: skip


def run_main_expecting_error(argv, capsys):
    assert main(argv) == 2
    assert not ray.is_initialized(), "validation must fail before Ray starts"
    return capsys.readouterr().err


def test_valid_command_line_parses_with_reuse(tiny_models):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base))
    assert args.coherent.base_model == base
    assert args.coherent.sft_model == sft  # defaults to the actor
    assert args.coherent.reuse_ref_logprobs is True
    assert args.reward.clip_range is None  # OpenRLHF's (-10, 10) default would clip a summed log-ratio


@pytest.mark.parametrize(
    "extra, why",
    [
        (["--algo.kl.init_coef", "0"], "no reference model"),
        (["--rollout.temperature", "0.7"], "--rollout.temperature 0.7"),
        (["--coherent.reuse_ref", "never"], "--coherent.reuse_ref never"),
    ],
)
def test_sft_log_probs_are_recomputed_when_the_reference_cannot_stand_for_them(tiny_models, extra, why, caplog):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base, *extra))
    assert args.coherent.reuse_ref_logprobs is False
    assert why in caplog.text


def test_explicit_clip_range_is_kept(tiny_models):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base, "--reward.clip_range", "-50", "50"))
    assert list(args.reward.clip_range) == [-50.0, 50.0]


def test_legacy_flag_spellings_are_accepted(tiny_models, capsys):
    base, sft = tiny_models
    args = parse_args(
        ["--pretrain", sft, "--critic_pretrain", sft, "--reward_pretrain", "coherent",
         "--coherent.base_model", base, "--prompt_data", "prompts.jsonl"]
    )  # fmt: skip
    assert args.actor.model_name_or_path == sft
    assert args.critic.model_name_or_path == sft
    assert args.reward.model_name_or_path == "coherent"
    assert args.data.prompt_dataset == "prompts.jsonl"
    assert "--pretrain is the old spelling of --actor.model_name_or_path" in capsys.readouterr().out


def test_coherent_without_base_model(tiny_models, capsys):
    _, sft = tiny_models
    argv = ["--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft, "--reward.model_name_or_path", "coherent"]
    assert "--coherent.base_model" in run_main_expecting_error(argv, capsys)


def test_missing_base_model_path(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    err = run_main_expecting_error(srppo_argv(sft, str(tmp_path / "nope")), capsys)
    assert "--coherent.base_model" in err and "no such directory" in err


def test_base_model_that_is_not_a_causal_lm(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    err = run_main_expecting_error(srppo_argv(sft, str(bert)), capsys)
    assert "--coherent.base_model" in err and "not a causal language model" in err


def test_tokenizers_with_different_vocabularies(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.devmode.tiny_models import make_tiny_llama

    _, sft = tiny_models
    other = make_tiny_llama(str(tmp_path / "other"), words=["completely", "different", "words"])
    err = run_main_expecting_error(srppo_argv(sft, other), capsys)
    assert "--actor.model_name_or_path" in err and "--coherent.base_model" in err and "vocabularies" in err


def test_tokenizers_with_different_special_tokens(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    # (An EOS-only difference is accepted by PPO: tests/test_cluster_correctness.py.)
    odd = tmp_path / "odd_bos"
    shutil.copytree(base, odd)
    cfg_path = odd / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["bos_token"] = "."
    cfg_path.write_text(json.dumps(cfg))
    err = run_main_expecting_error(srppo_argv(sft, str(odd)), capsys)
    assert "special tokens" in err and "bos_token_id" in err


def test_explicit_sft_model_is_checked_and_named(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    err = run_main_expecting_error(srppo_argv(sft, base, "--coherent.sft_model", str(tmp_path / "gone")), capsys)
    assert "--coherent.sft_model" in err


def test_gae_without_an_explicit_critic(tiny_models, capsys):
    base, sft = tiny_models
    argv = ["--actor.model_name_or_path", sft, "--reward.model_name_or_path", "coherent", "--coherent.base_model", base]
    err = run_main_expecting_error(argv, capsys)
    assert "--critic.model_name_or_path" in err and "gae" in err


def test_token_wise_reward_with_a_group_estimator(tiny_models, capsys):
    base, sft = tiny_models
    argv = srppo_argv(sft, base, "--coherent.reward_type", "token", "--algo.advantage.estimator", "rloo",
                      "--rollout.n_samples_per_prompt", "2")  # fmt: skip
    err = run_main_expecting_error(argv, capsys)
    assert "--coherent.reward_type token" in err and "rloo" in err


def test_coherent_with_a_missing_remote_reward_file(tiny_models, capsys):
    base, sft = tiny_models
    err = run_main_expecting_error(srppo_argv(sft, base, "--reward.remote_url", "reward.py"), capsys)
    assert "--reward.remote_url reward.py: no such reward_func file" in err


def test_mix_with_a_rule_reward_takes_the_url_and_checks_its_flags(tiny_models, tmp_path, capsys):
    """With a rule reward the URL moves to the mix (OpenRLHF then builds the coherent reward group)."""
    base, sft = tiny_models
    func = tmp_path / "rule.py"
    func.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n")
    args = parse_args(srppo_argv(sft, base, "--reward.remote_url", str(func), "--coherent.rule_weight", "2"))
    assert args.coherent.rule_reward == str(func) and not args.reward.remote_url
    # A relative file is made absolute: the trainer actor loads it from Ray's copy of the working_dir.
    relative = parse_args(srppo_argv(sft, base, "--reward.remote_url", os.path.relpath(func)))
    assert relative.coherent.rule_reward == str(func)
    assert args.coherent.rule_weight == 2.0 and args.coherent.weight == 1.0
    for extra, message in [
        (["--coherent.rule_weight", "0.5"], "none is given"),
        (["--reward.remote_url", str(func), "--coherent.weight", "nan"], "--coherent.weight must be a finite number"),
        (["--reward.remote_url", str(func), "--coherent.weight", "0", "--coherent.rule_weight", "0"], "both 0"),
        (["--reward.remote_url", str(func), "--coherent.mix_normalize", "group"], "n_samples_per_prompt >= 2"),
        (["--reward.remote_url", str(func), "--coherent.reward_type", "token"], "--coherent.reward_type token"),
        (["--reward.remote_url", str(func), "--coherent.mix_normalize", "batch", "--reward.stop_properly_penalty_coef", "2"],
         "a normalised total is negative"),
        (["--reward.remote_url", str(func), "--algo.dynamic_filtering_enable"], "--algo.dynamic_filtering_enable with"),
    ]:
        err = run_main_expecting_error(srppo_argv(sft, base, *extra), capsys)
        assert message in err, (extra, err)


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm"])
def test_every_required_estimator_is_accepted(tiny_models, estimator):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base, "--algo.advantage.estimator", estimator, "--rollout.n_samples_per_prompt", "2"))
    assert args.algo.advantage.estimator == estimator


def test_unknown_flags_still_fail_like_openrlhf(tiny_models):
    base, sft = tiny_models
    with pytest.raises(SystemExit) as e:
        parse_args(srppo_argv(sft, base, "--coherent.no_such_flag", "1"))
    assert e.value.code == 2
    assert os.environ.get("RAY_ADDRESS") is None
