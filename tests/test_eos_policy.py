"""demo/eos_policy.py, the measurement behind `--coherent.eos_policy`: its scoring and its three
final-position terms, against independent computations."""

import pytest
import torch

from conftest import plain_log_probs


def test_score_gives_content_and_stop_log_probs_of_every_prefix(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demo.reward_check import score

    _, sft = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32, attn_implementation="eager").eval()
    prompts = [tokenizer("user : say hello assistant :")["input_ids"], tokenizer("user : count to three assistant :")["input_ids"]]
    contents = [tokenizer(" hello !")["input_ids"], tokenizer(" one two three four")["input_ids"]]
    eos, other = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("!")
    for (content_lp, stop_lp), p, c in zip(score(model, prompts, contents, (eos, other), tokenizer.pad_token_id), prompts, contents):
        torch.testing.assert_close(content_lp, plain_log_probs(sft, p, c), atol=1e-5, rtol=1e-5)
        assert stop_lp.shape == (len(c) + 1, 2)
        for j in range(len(c) + 1):  # stopping after j content tokens, with either id
            for col, stop_id in enumerate((eos, other)):
                expected = plain_log_probs(sft, p, list(c[:j]) + [stop_id])[-1]
                assert stop_lp[j, col].item() == pytest.approx(expected.item(), abs=1e-5)


def test_the_three_policies_final_terms():
    from demo.eos_policy import rewards

    # Content log-probs of 2 tokens; stop log-probs after 0, 1, 2 tokens for (SFT's EOS, base's EOS).
    sft = (torch.tensor([-1.0, -1.0]), torch.tensor([[-9.0, -9.0], [-8.0, -8.0], [-0.5, -7.0]]))
    base = (torch.tensor([-2.0, -3.0]), torch.tensor([[-5.0, -5.0], [-6.0, -4.0], [-12.0, -2.0]]))
    content = 3.0  # (-1 + 2) + (-1 + 3)
    assert rewards(sft, base, 2, False, "base_eos") == (content, content / 2)  # truncated: no final term
    assert rewards(sft, base, 2, True, "exclude") == (content, content / 2)  # ... nor under exclude
    assert rewards(sft, base, 2, True, "base_eos") == (content + 1.5, (content + 1.5) / 3)  # -0.5 - (-2)
    assert rewards(sft, base, 2, True, "sft_eos") == (content + 11.5, (content + 11.5) / 3)  # -0.5 - (-12)
    assert rewards(sft, base, 1, True, "base_eos") == (1.0 - 4.0, (1.0 - 4.0) / 2)  # stopped early: -8 - (-4)


def test_ppo_scores_the_base_own_eos_where_the_sft_model_stops(tmp_path, tiny_models, prompt_file):
    """The real OpenRLHF PPO loop with a pair whose EOS differ (the SFT model and actor stop on ".",
    the base on </s>), under the default --coherent.eos_policy base_eos: every reward PPO trained on
    equals log p_SFT(y) - log p_base(y'), y' = y with a final "." replaced by the base's </s>, recomputed
    with plain transformers."""
    import json
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    from conftest import plain_coherent_reward
    from srppo_helpers import run_srppo, tiny_srppo_argv

    base, sft = tiny_models
    sft_dot = tmp_path / "sft_dot"
    shutil.copytree(sft, sft_dot)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    base_eos = tokenizer.eos_token_id
    tokenizer.eos_token = "."
    tokenizer.save_pretrained(sft_dot)
    dot = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=dot, pad_token_id=tokenizer.pad_token_id).save_pretrained(sft_dot)
    out = tmp_path / "run"
    log = run_srppo(tiny_srppo_argv(str(sft_dot), base, prompt_file, str(out), "--algo.advantage.estimator", "reinforce"))
    assert "eos_policy=base_eos" in log
    rows = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    changes = []
    for row in rows:
        response = list(row["response_ids"])
        swapped = response[-1] == dot
        if swapped:
            response[-1] = base_eos
        expected = plain_log_probs(str(sft_dot), row["prompt_ids"], row["response_ids"]).sum()
        expected -= plain_log_probs(base, row["prompt_ids"], response).sum()
        assert row["reward"] == pytest.approx(expected.item(), abs=2e-3, rel=1e-4), row
        if swapped:  # what the swap changes: the base scoring "." there instead
            unswapped = plain_coherent_reward(str(sft_dot), base, row["prompt_ids"], row["response_ids"])
            changes.append(abs(row["reward"] - unswapped))
    assert len(changes) >= 2, f"only {len(changes)} of {len(rows)} responses ended with the SFT model's EOS: the swap went unchecked"
    assert max(changes) > 0.05, changes  # the random tiny base finds "." and </s> about as likely: some, not all, differ
