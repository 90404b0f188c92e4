"""Smoke checks of benchmarks/ (issue 6). The benchmarks themselves are not part of the suite:
this runs the cheap ones once at toy sizes and checks that the PPO ones build command lines
OpenRLHF's own parser accepts (a full PPO benchmark run takes minutes: three Ray clusters)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ is not installed

from benchmarks import engine_throughput, memory_8b, reward_forward, reward_overhead, scoring_throughput, vs_trl
from openrlhf_coherent.cli.train_ppo_ray import parse_args


def test_scoring_throughput_runs_and_agrees_with_plain(tmp_path):
    out = tmp_path / "scoring.json"
    # main() exits non-zero if any implementation's log-probs differ from the plain one.
    scoring_throughput.main(["--quick", "--rows", "6", "--vocab", "500", "--hidden", "64", "--peak_size", "256", "--out", str(out)])
    record = json.loads(out.read_text())
    for kind in ("equal", "skewed"):
        impls = record["results"][kind]["impls"]
        assert set(impls) == {"plain", "plain sorted", "score path"}
        assert all(s["tokens_per_s"]["median"] > 0 for s in impls.values())
    assert record["matmul_peak_flops_per_s"] > 0 and len(record["loadavg_start"]) == 3


def test_reward_forward_runs_and_agrees_with_openrlhf(tmp_path):
    out = tmp_path / "reward_forward.json"
    # main() exits non-zero if the coherent actor's log-probs differ from OpenRLHF's forward.
    reward_forward.main(["--quick", "--out", str(out)])
    (lengths,) = json.loads(out.read_text())["results"].values()
    assert set(lengths["impls"]) == {"openrlhf forward", "coherent actor"}
    assert all(s["seconds"]["min"] > 0 for s in lengths["impls"].values())
    # right-padded rows: logits are kept from the shortest prompt's response on, not for every position
    assert lengths["logit_positions"]["coherent actor"] < lengths["logit_positions"]["openrlhf forward"] == lengths["width"]


@pytest.mark.parametrize("lengths", ["5", "64:x", "64:1", ""])
def test_reward_forward_bad_lengths_fail_before_any_model_is_built(lengths, capsys):
    with pytest.raises(SystemExit) as e:
        reward_forward.main(["--lengths", lengths])
    assert e.value.code == 2 and "--lengths must be prompt:response pairs" in capsys.readouterr().err


def test_engine_throughput_runs_both_sides(tmp_path):
    out = tmp_path / "engine.json"
    engine_throughput.main(["--quick", "--out", str(out)])
    record = json.loads(out.read_text())
    assert len(record["tokens_per_s"]) == 2
    assert all(s["min"] > 0 for s in record["tokens_per_s"].values())
    assert record["ratio_engine_to_plain"] > 0


def test_memory_8b_table(tmp_path):
    out = tmp_path / "memory.json"
    memory_8b.main(["--out", str(out)])
    record = json.loads(out.read_text())
    assert 8.0e9 < record["params"]["policy"] < 8.1e9  # Llama-3-8B shape
    colocated = record["layouts"]["colocate_all (coherent actor with reference)"]
    # Reuse drops the SFT copy from the coherent actor: 2 B/param of 8B over 8 GPUs = 2 GB per GPU.
    drop = colocated["no_reuse"]["roles_gb_per_gpu"]["coherent actor"] - colocated["reuse"]["roles_gb_per_gpu"]["coherent actor"]
    assert drop == pytest.approx(2 * record["params"]["policy"] / 8 / 1e9)
    assert 0.05 < record["flops_per_step"]["saved_fraction_of_step"] < 0.15


def test_reward_overhead_variants_parse(tmp_path, tiny_models):
    class Args:
        steps, prompts_per_step, micro_batch_size, prompt_words, max_new_tokens = 2, 4, 2, 8, 4

    base, sft = tiny_models
    models = {"sft": sft, "base": base}
    parsed = {
        v: parse_args(reward_overhead.ppo_argv(Args, models, "prompts.jsonl", str(tmp_path), v)) for v in reward_overhead.VARIANTS
    }
    assert parsed["a"].reward.model_name_or_path == base
    assert parsed["b"].reward.model_name_or_path == parsed["c"].reward.model_name_or_path == "coherent"
    # (b) must really take the reuse path and (c) must not, or the comparison measures nothing.
    assert parsed["b"].coherent.reuse_ref_logprobs and not parsed["c"].coherent.reuse_ref_logprobs
    for args in parsed.values():  # the same PPO setup apart from the reward
        assert args.algo.advantage.estimator == "gae" and args.rollout.max_new_tokens == 4


@pytest.mark.parametrize("argv, message", [(["--rounds", "0"], "--rounds must be at least 1"),
                                           (["--steps", "1"], "--steps must exceed --warmup")])  # fmt: skip
def test_vs_trl_bad_flags_fail_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        vs_trl.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not vs_trl.trl_available(), reason="TRL is installed only by the benchmark extra (make bench-venv)")
def test_vs_trl_ours_side_parses(tmp_path, tiny_models):
    cfg = dict(prompts_per_step=4, group=2, steps=2, prompt_words=8, max_new_tokens=4, seed=0, lr=1e-6)
    base, sft = tiny_models
    args = parse_args(vs_trl.ours_argv(cfg, {"sft": sft, "base": base}, "p.jsonl", str(tmp_path)))
    assert args.algo.advantage.estimator == "group_norm" and args.rollout.n_samples_per_prompt == 2
    assert args.algo.kl.init_coef == 0  # TRL's default beta 0: no reference model on either side
    assert not args.coherent.reuse_ref_logprobs  # so the coherent actor runs both models, like TRL's callable
