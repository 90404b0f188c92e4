"""The coherent reward actor in a real Ray actor group (two ranks, gloo) against plain transformers."""

import os

import pytest
import ray
import torch

from conftest import plain_log_probs
from openrlhf_coherent import devmode
from openrlhf_coherent.cli.train_ppo_ray import parse_args

PAIRS = [  # (prompt, response) of different lengths; the last response is "truncated" (no EOS)
    ("user : say hello assistant :", " hello ! </s>"),
    ("user : what is the color of the sun ? assistant :", " the sun is yellow . </s>"),
    ("user : name a big river assistant :", " the big river is blue . </s>"),
    ("user : count to three assistant :", " one two three four five six seven eight"),
]


@pytest.fixture
def ray_cluster():
    ray.init(**devmode.ray_init_kwargs(num_gpus=2))
    yield
    ray.shutdown()


def openrlhf_batch(tokenizer, pairs):
    """Samples in OpenRLHF's layout: one [prompt | response] row each, concatenated (right-padded)
    by OpenRLHF's own Experience.concat_experiences; action_mask aligned to sequences[:, 1:]."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    samples = []
    for prompt, response in pairs:
        p, r = tokenizer(prompt)["input_ids"], tokenizer(response)["input_ids"]
        seq = torch.tensor([p + r])
        action_mask = torch.tensor([[0] * (len(p) - 1) + [1] * len(r)])
        samples.append(Experience(sequences=seq, attention_mask=torch.ones_like(seq), action_mask=action_mask))
    return Experience.concat_experiences(samples, tokenizer.pad_token_id), samples


def group_forward(group, batches, **extra):
    refs = group.async_run_method_batch(
        method_name="forward",
        sequences=[b.sequences for b in batches],
        action_mask=[b.action_mask for b in batches],
        attention_mask=[b.attention_mask for b in batches],
        **extra,
    )
    return [out for chunk in ray.get(refs) for out in chunk]


def make_group(tiny_models, *extra, zero_stage="0"):
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from openrlhf.utils import get_strategy

    from openrlhf_coherent.actor import CoherentRewardActor

    base, sft = tiny_models
    args = parse_args(
        ["--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft,
         "--reward.model_name_or_path", "coherent", "--coherent.base_model", base,
         "--reward.num_gpus_per_node", "2", "--ds.param_dtype", "fp32",
         "--ds.attn_implementation", "eager", "--ds.zero_stage", zero_stage, *extra]
    )  # fmt: skip
    strategy = get_strategy(args)
    group = RayActorGroup(1, 2, CoherentRewardActor, num_gpus_per_actor=1)
    ray.get(group.async_init_model_from_pretrained(strategy, "coherent"))
    return group


def test_actor_group_matches_plain_transformers_in_fp32(tiny_models, ray_cluster):
    from transformers import AutoTokenizer

    base, sft = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(sft)
    # ZeRO-3: the actor calls the decoder and the head as separate modules (head on response
    # positions only); DeepSpeed's per-module hooks must gather the partitioned weights for each.
    group = make_group(tiny_models, "--coherent.reuse_ref", "never", zero_stage="3")
    # two micro-batches -> one per rank of the two-actor group
    batch_a, samples_a = openrlhf_batch(tokenizer, PAIRS[:2])
    batch_b, samples_b = openrlhf_batch(tokenizer, PAIRS[2:])
    outputs = group_forward(group, [batch_a, batch_b])
    assert len(outputs) == 2

    for out, batch, pairs in ((outputs[0], batch_a, PAIRS[:2]), (outputs[1], batch_b, PAIRS[2:])):
        assert out["base"].dtype == torch.float32 and out["base"].shape == batch.action_mask.shape
        for i, (prompt, response) in enumerate(pairs):
            p, r = tokenizer(prompt)["input_ids"], tokenizer(response)["input_ids"]
            mask = batch.action_mask[i].bool()
            for key, path in (("base", base), ("sft", sft)):
                expected = plain_log_probs(path, p, r)
                torch.testing.assert_close(out[key][i][mask], expected, atol=1e-5, rtol=1e-5)
                # nothing outside the response
                assert torch.all(out[key][i][~mask] == 0)
            ratio = (out["sft"][i][mask] - out["base"][i][mask]).sum()
            expected_ratio = plain_log_probs(sft, p, r).sum() - plain_log_probs(base, p, r).sum()
            assert ratio.item() == pytest.approx(expected_ratio.item(), abs=1e-5)

    # --coherent.eos_policy base_eos: the base scores the sequences the experience maker gives it (a
    # finished row's final EOS replaced by the base's own; "!" stands in for it here), the SFT model
    # the rollout's own.
    from openrlhf_coherent.experience import base_sequences

    stand_in = tokenizer.convert_tokens_to_ids("!")
    swapped = [base_sequences(b, [tokenizer.eos_token_id], stand_in) for b in (batch_a, batch_b)]
    outputs = group_forward(group, [batch_a, batch_b], base_sequences=swapped)
    for out, batch, pairs in ((outputs[0], batch_a, PAIRS[:2]), (outputs[1], batch_b, PAIRS[2:])):
        for i, (prompt, response) in enumerate(pairs):
            p, r = tokenizer(prompt)["input_ids"], tokenizer(response)["input_ids"]
            mask = batch.action_mask[i].bool()
            base_r = r[:-1] + [stand_in] if r[-1] == tokenizer.eos_token_id else r  # the truncated row: as it is
            torch.testing.assert_close(out["base"][i][mask], plain_log_probs(base, p, base_r), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out["sft"][i][mask], plain_log_probs(sft, p, r), atol=1e-5, rtol=1e-5)

    # A worker of the dev mode's Ray job: one OpenMP thread (Ray's default for a one-CPU worker;
    # the set-up hook imports torch before Ray would set it, so the dev mode sets it itself).
    if devmode.cpu_mode() and "OMP_NUM_THREADS" not in os.environ:
        assert ray.get(ray.remote(lambda: torch.get_num_threads()).remote()) == 1


def test_head_on_responses_only_equals_openrlhf_actor_forward(tiny_models):
    """scoring.action_log_probs (the actor's forward: logits of the response window only) against
    OpenRLHF's own Actor.forward on the same right-padded batch: full-length action masks, a shorter
    last-A window, and a masked-out tail (a response that ended early)."""
    from openrlhf.models import Actor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_coherent.scoring import action_log_probs

    _, sft = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(sft)
    # fp32 (OpenRLHF loads from a path only in bf16/fp16); a wrapped model object leaves packing unset.
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32, attn_implementation="eager").eval()
    actor = Actor(model, temperature=1.0)
    actor.packing_samples = False
    batch, _ = openrlhf_batch(tokenizer, PAIRS)
    window = batch.action_mask[:, -9:].clone()
    window[0, -2:] = 0
    for action_mask in (batch.action_mask, window):
        with torch.no_grad():
            expected = actor(batch.sequences, action_mask, batch.attention_mask)
        got = action_log_probs(actor.model, batch.sequences, batch.attention_mask, action_mask)
        assert got.dtype == torch.float32 and got.shape == action_mask.shape
        torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)
        assert torch.all(got[action_mask == 0] == 0)
