"""The paper's baselines as recipes: SFT (Extended), SPIN (spin_pairs + OpenRLHF train_dpo), PPO with
a preference reward model. Dry-runs of the presets against the paper's numbers; tiny real runs of
spin_pairs -> train_dpo and of SFT (Extended) on CPU; the tiny ppo_rm command is parsed by
OpenRLHF's own train_ppo_ray parser (its real run is stock OpenRLHF reward-model PPO, which
tests/test_devmode.py::test_stock_openrlhf_ppo_runs_on_cpu runs)."""

import json
import os
import subprocess
import sys

import pytest

from openrlhf_coherent.cli import spin_pairs
from test_recipe import CONFIGS, REPO, TINY, assert_paper_ppo, dry_run

BASELINES = os.path.join(CONFIGS, "baselines")


@pytest.mark.parametrize("model, lr", [("mistral_7b", 5e-6), ("llama3_8b", 1e-5)])
def test_sft_extended_preset(model, lr, capsys, tmp_path):
    (l1, sft, _), (l2, ext, argv) = dry_run(capsys, os.path.join(BASELINES, f"sft_extended_{model}.yaml"), f"output_dir={tmp_path}")
    assert (l1, l2) == ("sft", "sft_extended") and "openrlhf.cli.train_sft" in argv
    assert ext["--model.model_name_or_path"] == sft["--ckpt.output_dir"] == str(tmp_path / "sft")  # continues SFT
    assert int(sft["--train.max_epochs"]) + int(ext["--train.max_epochs"]) == 6  # Table 6: 6 epochs in all
    assert float(ext["--adam.lr"]) == float(sft["--adam.lr"]) == lr and int(ext["--train.batch_size"]) == 128
    assert ext["--data.dataset"] == sft["--data.dataset"] == "allenai/tulu-v2-sft-mixture"


@pytest.mark.parametrize("model", ["mistral_7b", "llama3_8b"])
def test_spin_preset(model, capsys, tmp_path):
    (_, sft, _), (l2, pairs, pairs_argv), (l3, dpo, dpo_argv) = dry_run(
        capsys, os.path.join(BASELINES, f"spin_{model}.yaml"), f"output_dir={tmp_path}"
    )
    assert (l2, l3) == ("spin_pairs", "dpo") and "openrlhf_coherent.cli.spin_pairs" in pairs_argv
    assert pairs["--model"] == dpo["--model.model_name_or_path"] == dpo["--ref.model_name_or_path"] == str(tmp_path / "sft")
    assert "openrlhf.cli.train_dpo" in dpo_argv and dpo["--data.dataset"] == pairs["--output"]
    assert float(dpo["--adam.lr"]) == 5e-7  # Table 6
    steps = int(pairs["--max_samples"]) * int(dpo["--train.max_epochs"]) // int(dpo["--train.batch_size"])
    assert steps == 2500  # Table 6: 2500 steps (pairs that are empty or equal to the demonstration drop out)
    assert pairs["--output_key"] == "" and pairs["--input_key"] == "messages"


def test_ppo_rm_preset(capsys, tmp_path):
    (_, sft, _), (label, ppo, argv) = dry_run(capsys, os.path.join(BASELINES, "ppo_rm_llama3_8b.yaml"), f"output_dir={tmp_path}")
    assert label == "ppo_rm" and ppo["--reward.model_name_or_path"] == "sfairXC/FsfairX-LLaMA3-RM-v0.1"
    assert not any(a.startswith("--coherent.") for a in argv)
    ppo = {**ppo, "--coherent.base_model": "meta-llama/Meta-Llama-3-8B", "--reward.model_name_or_path": "coherent"}
    assert_paper_ppo(ppo, 2, str(tmp_path / "sft"), "meta-llama/Meta-Llama-3-8B")  # Table 6: lr 5e-8, 2 episodes
    assert ppo["--ckpt.output_dir"] == str(tmp_path / "ppo_rm")


def test_tiny_ppo_rm_command_is_plain_openrlhf_ppo(capsys, tmp_path, tiny_models, prompt_file):
    """OpenRLHF's own parser (through our CLI, no Ray) accepts the ppo_rm stage and the coherent
    plugin stays out of it."""
    from openrlhf_coherent.cli.train_ppo_ray import parse_args

    base, sft = tiny_models
    [(_, ppo, argv)] = dry_run(capsys, TINY, f"root={tmp_path}", "method=ppo_rm", f"sft_model={sft}",
                                f"base_model={base}", f"ppo_rm.reward_model={base}", f"ppo.prompt_dataset={prompt_file}")  # fmt: skip
    args = parse_args(argv[3:])
    assert args.reward.model_name_or_path == base and args.actor.model_name_or_path == sft
    assert args.critic.model_name_or_path == sft and args.critic.freezing_steps == 0
    assert args.coherent.base_model is None


def run_recipe(*sets, timeout=600):
    cmd = [sys.executable, "-m", "openrlhf_coherent.cli.srppo", "--config", TINY]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from openrlhf_coherent.devmode.tiny_models import write_demonstrations

    root = tmp_path_factory.mktemp("baselines")
    write_demonstrations(str(root / "demos.jsonl"))
    return root


def test_spin_tiny_pairs_then_dpo(tiny_root, tiny_models):
    base, sft = tiny_models
    out = tiny_root / "spin"
    log = run_recipe(f"root={tiny_root}", f"base_model={base}", f"sft_model={sft}", f"output_dir={out}", "method=spin")
    demos = [json.loads(line) for line in open(tiny_root / "demos.jsonl")]
    pairs = [json.loads(line) for line in open(out / "spin" / "pairs.jsonl")]
    assert pairs and len(pairs) <= len(demos)
    for row in pairs:  # OpenRLHF's chat preference format: chosen = demonstration, rejected = SFT sample
        demo = demos[row["line"] - 1]
        assert row["prompt"] == [{"role": "user", "content": demo["input"]}]
        assert row["chosen"] == [{"role": "assistant", "content": demo["output"]}]
        assert row["rejected"][0]["role"] == "assistant" and row["rejected"][0]["content"].strip()
        assert row["rejected"][0]["content"] != demo["output"]
    assert "stage dpo done" in log and (out / "spin" / "dpo" / "model.safetensors").exists()
    assert "spin-pairs summary" in log


def test_sft_extended_tiny_continues_the_sft_model(tiny_root, tiny_models):
    base, sft = tiny_models
    out = tiny_root / "ext"
    log = run_recipe(f"root={tiny_root}", f"base_model={base}", f"sft_model={sft}", f"output_dir={out}",
                     "method=sft_extended", "sft_extended.total_epochs=3")  # fmt: skip
    assert f"--model.model_name_or_path {sft}" in log and "--train.max_epochs 1" in log
    assert (out / "sft_extended" / "model.safetensors").exists()


def test_spin_pairs_checks_rows_before_loading_anything(tmp_path, tiny_models, capsys):
    _, sft = tiny_models
    data = tmp_path / "conv.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")  # fmt: skip
    base_argv = ["--model", sft, "--input", str(data), "--input_key", "messages", "--output_key", "",
                 "--output", str(tmp_path / "pairs.jsonl")]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        spin_pairs.main(base_argv)  # conversations need the chat template
    assert e.value.code == 2 and "needs --apply_chat_template" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        spin_pairs.main(base_argv + ["--apply_chat_template"])
    assert e.value.code == 2 and "line 2" in capsys.readouterr().err
    assert not (tmp_path / "pairs.jsonl").exists()
